"""cloud-init's real cloud-config schema (22.4.2, Debian bookworm), in-process.

The package is never installed on the host: `make cloud-init-schema` runs
`apt-get download cloud-init` into .cache/cloud-init/ and extracts it; this
module puts the extracted dist-packages on sys.path and calls the same
functions as `cloud-init schema --config-file`, so the verdict is the same.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

import builder
from builder.errors import UserError

EXPECTED_VERSION = "22.4.2"
DIST_PACKAGES = Path("usr/lib/python3/dist-packages")


def cloudinit_root() -> Path:
    """The extracted package: $AMIBAKE_CLOUDINIT_ROOT or .cache/cloud-init/root."""
    env = os.environ.get("AMIBAKE_CLOUDINIT_ROOT")
    return Path(env) if env else builder.PROJECT_ROOT / ".cache" / "cloud-init" / "root"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """cloud-init's `safeyaml.load` (SafeLoader + python/unicode as str), on libyaml.

    Same documents, same values; libyaml only makes it ~10x faster.
    """

    def construct_python_unicode(self, node: yaml.Node) -> Any:
        return self.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:python/unicode", _Loader.construct_python_unicode)


@dataclass(frozen=True)
class SchemaIssue:
    """One schema problem: a dotted path in the cloud-config (or format-lN.cM), a message."""

    path: str
    message: str


@functools.lru_cache(maxsize=1)
def _cloudinit() -> tuple[ModuleType, dict[str, Any]]:
    dist = cloudinit_root() / DIST_PACKAGES
    if not (dist / "cloudinit" / "config" / "schema.py").is_file():
        raise UserError(
            f"cloud-init's schema is not set up ({dist} is missing)",
            hint="run `make cloud-init-schema` (it downloads Debian's cloud-init package "
            "and extracts it under .cache/; nothing is installed)",
        )
    if str(dist) not in sys.path:
        sys.path.insert(0, str(dist))
    # Importing cloud-init resets the root logger to NOTSET (its log module
    # configures logging for a whole boot); put ours back, or every library's
    # DEBUG records (botocore request bodies included) reach our handlers.
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import cloudinit.version
        from cloudinit.config import schema as ci_schema
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers

    version = cloudinit.version.version_string()
    if version != EXPECTED_VERSION:
        raise UserError(
            f"cloud-init {version} found in {dist}, expected {EXPECTED_VERSION}",
            hint="delete .cache/cloud-init and run `make cloud-init-schema`",
        )
    return ci_schema, ci_schema.get_schema()


def cloudinit_version() -> str:
    _cloudinit()
    import cloudinit.version

    return str(cloudinit.version.version_string())


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every top-level key some cloud-init module reads (from the schema itself)."""
    _, schema = _cloudinit()
    keys: set[str] = set()
    for entry in schema.get("allOf", []):
        ref = entry.get("$ref", "")
        target = schema.get("$defs", {}).get(ref.rpartition("/")[2], entry)
        keys.update(target.get("properties", {}))
    return frozenset(keys)


def schema_problems(content: bytes | str) -> list[SchemaIssue]:
    """cloud-init 22.4.2's verdict on a cloud-config document; [] when valid.

    Mirrors `validate_cloudconfig_file`: the `#cloud-config` header, YAML,
    a mapping at the top, then the schema (deprecations are not errors).
    """
    ci_schema, schema = _cloudinit()
    data = content.encode() if isinstance(content, str) else content
    if not data.startswith(ci_schema.CLOUD_CONFIG_HEADER):
        return [SchemaIssue("format-l1.c1", 'needs to begin with "#cloud-config"')]
    try:
        config = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return [SchemaIssue(f"format-l{line}.c{col}", f"not valid YAML: {exc}")]
    if not isinstance(config, dict):
        return [SchemaIssue("", "Cloud-config is not a YAML dict.")]
    try:
        with warnings.catch_warnings():
            # cloud-init 22.4 calls an API newer jsonschema deprecates; same result.
            warnings.simplefilter("ignore", DeprecationWarning)
            ci_schema.validate_cloudconfig_schema(
                config, schema, strict=True, log_deprecations=False
            )
    except ci_schema.SchemaValidationError as exc:
        return [SchemaIssue(p.path, p.message) for p in exc.schema_errors]
    return []
