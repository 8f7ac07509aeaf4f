"""cloud-init's verdict on cloud-config, as the image's cloud-init gives it.

The image runs Debian bookworm's cloud-init 22.4.2 with bookworm's Python
packages: PyYAML 6.0 (whose pure-Python `SafeLoader` cloud-init uses; libyaml
disagrees on tabs, deep nesting, `%YAML 1.3`, lone surrogates and BOMs) and
jsonschema 4.10.3 with its format checkers (rfc3987 for `format: uri`, the
standard library's `date.fromisoformat` for `format: date`). None of it is
installed on the host: `make cloud-init-schema` downloads those Debian
packages into .cache/cloud-init/ and extracts them; this module imports them
from there, isolated from the venv's own PyYAML and jsonschema
(`builder.validate.isolated`), and runs the same steps as
`cloud-init schema --config-file`, so the verdict is the same.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import builder
from builder.errors import UserError
from builder.validate.isolated import IsolatedImports
from builder.validate.verdict_store import TreeFacts, VerdictStore, default_store

EXPECTED_VERSION = "22.4.2"
EXPECTED_JSONSCHEMA = "4.10.3"
DIST_PACKAGES = Path("usr/lib/python3/dist-packages")

#: `cloud-init schema --config-file` (bookworm's Python 3.11, recursion limit
#: 1000) fails on a document nested too deep for the rest of the limit with
#: "maximum recursion depth exceeded". Here the check runs in a fresh thread,
#: whose stack below the YAML load is this many frames deeper than the CLI's;
#: the limit is raised by as much meanwhile, so the same depth fails here.
#: (Calibrated, and checked at the threshold, by tests/test_validate_verdict.py.)
EXTRA_FRAMES = 2

T = TypeVar("T")


def cloudinit_root() -> Path:
    """The extracted packages: $AMIBAKE_CLOUDINIT_ROOT, else .cache/cloud-init/root
    of the checkout, else (an installed amibake) cloud-init/root in amibake's cache."""
    env = os.environ.get("AMIBAKE_CLOUDINIT_ROOT")
    if env:
        return Path(env)
    if builder.CHECKOUT is not None:
        return builder.CHECKOUT / ".cache" / "cloud-init" / "root"
    from builder.cache_dir import default_cache_dir

    return default_cache_dir() / "cloud-init" / "root"


@dataclass(frozen=True)
class SchemaIssue:
    """One schema problem: a dotted path in the cloud-config (or format-lN.cM), a message."""

    path: str
    message: str


@dataclass(frozen=True)
class _Bookworm:
    imports: IsolatedImports
    schema_module: ModuleType
    safeyaml: ModuleType
    schema: dict[str, Any]
    version: str


def _distribution_version(name: str) -> str:
    """An installed distribution's version; importlib.metadata is imported here
    because a warm validate (verdicts on disk) never needs it (~35 ms)."""
    from importlib import metadata

    return metadata.version(name)


@functools.lru_cache(maxsize=1)
def _bookworm() -> _Bookworm:
    dist = cloudinit_root() / DIST_PACKAGES
    needed = ("cloudinit/config/schema.py", "jsonschema/__init__.py", "yaml/__init__.py",
              "rfc3987.py")
    if not all((dist / rel).is_file() for rel in needed):
        raise UserError(
            f"cloud-init's schema is not set up ({dist} lacks cloud-init, jsonschema or PyYAML)",
            hint="run `make cloud-init-schema` (it downloads Debian's cloud-init package and "
            "the Python packages it imports, and extracts them under .cache/; nothing is "
            "installed), or point AMIBAKE_CLOUDINIT_ROOT at such a tree",
        )
    imports = IsolatedImports(dist)
    # Importing cloud-init resets the root logger to NOTSET (its log module
    # configures logging for a whole boot); put ours back, or every library's
    # DEBUG records (botocore request bodies included) reach our handlers.
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        with imports.active():
            ci_version = importlib.import_module("cloudinit.version")
            safeyaml = importlib.import_module("cloudinit.safeyaml")
            ci_schema = importlib.import_module("cloudinit.config.schema")
            version = ci_version.version_string()
            jsonschema_version = _distribution_version("jsonschema")
            schema = ci_schema.get_schema()
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    for name, found, expected in (("cloud-init", version, EXPECTED_VERSION),
                                  ("jsonschema", jsonschema_version, EXPECTED_JSONSCHEMA)):
        if found != expected:
            raise UserError(
                f"{name} {found} found in {dist}, expected {expected} (Debian bookworm's)",
                hint="delete .cache/cloud-init and run `make cloud-init-schema`",
            )
    return _Bookworm(imports, ci_schema, safeyaml, schema, version)


@contextlib.contextmanager
def bookworm_python() -> Iterator[None]:
    """Inside: `import cloudinit…` (and its PyYAML, jsonschema…) are Debian bookworm's."""
    with _bookworm().imports.active():
        yield


#: Where verdicts are kept between runs; None (the default: library calls and
#: tests judge every document afresh) until `keep_verdicts_on_disk()`.
_disk: VerdictStore | None = None


def keep_verdicts_on_disk() -> None:
    """From now on, read and keep verdicts and the tree's facts in amibake's
    cache (`amibake validate` does this; see builder/validate/verdict_store.py)."""
    global _disk
    _disk = default_store(cloudinit_root() / DIST_PACKAGES)
    _facts.cache_clear()
    _cached_verdict.cache_clear()


def cloudinit_version() -> str:
    return _facts().version


def known_keys() -> frozenset[str]:
    """Every top-level key some cloud-init module reads (from the schema itself)."""
    return _facts().known_keys


@functools.lru_cache(maxsize=1)
def _facts() -> TreeFacts:
    if _disk is not None and (kept := _disk.facts()) is not None:
        return kept
    ci = _bookworm()
    schema = ci.schema
    keys: set[str] = set()
    for entry in schema.get("allOf", []):
        ref = entry.get("$ref", "")
        target = schema.get("$defs", {}).get(ref.rpartition("/")[2], entry)
        keys.update(target.get("properties", {}))
    facts = TreeFacts(ci.version, frozenset(keys))
    if _disk is not None:
        _disk.save_facts(facts)
    return facts


def schema_problems(content: bytes | str) -> list[SchemaIssue]:
    """cloud-init 22.4.2's verdict on a cloud-config document; [] when valid."""
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    return list(_cached_verdict(data))


def forget_verdicts() -> None:
    """Drop the verdicts kept so far (bench/render.py times the full work)."""
    _cached_verdict.cache_clear()


@functools.lru_cache(maxsize=64)
def _cached_verdict(data: bytes) -> tuple[SchemaIssue, ...]:
    """The verdict depends on the bytes only: `render` and `bake` check the
    documents `validate` already checked in the same process (cloud-init's
    pure-Python YAML load is most of the cost), and, once `validate` asked
    for it, on disk between runs."""
    if _disk is not None and (kept := _disk.get(data)) is not None:
        return tuple(SchemaIssue(path, message) for path, message in kept)
    ci = _bookworm()
    with ci.imports.active():
        issues = tuple(_at_cli_depth(lambda: _verdict(ci, data)))
    if _disk is not None:
        _disk.put(data, [(i.path, i.message) for i in issues])
    return issues


def _verdict(ci: _Bookworm, data: bytes) -> list[SchemaIssue]:
    """`validate_cloudconfig_file` step by step, and `handle_schema_args`' error cases:
    the header, YAML, a mapping at the top, the schema (deprecations are not errors)."""
    ci_schema = ci.schema_module
    if not data.startswith(ci_schema.CLOUD_CONFIG_HEADER):
        return [SchemaIssue("format-l1.c1", 'needs to begin with "#cloud-config"')]
    try:
        config = ci.safeyaml.load(data)
    except ci_schema.yaml.YAMLError as exc:
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return [SchemaIssue(f"format-l{line}.c{col}", f"not valid YAML: {exc}")]
    except RecursionError:
        return [SchemaIssue("", "nested too deeply for cloud-init's YAML loader "
                                "(maximum recursion depth exceeded)")]
    if not isinstance(config, dict):
        return [SchemaIssue("", "Cloud-config is not a YAML dict.")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ci_schema.validate_cloudconfig_schema(
                config, ci.schema, strict=True, log_deprecations=False
            )
    except ci_schema.SchemaValidationError as exc:
        return [SchemaIssue(p.path, p.message) for p in exc.schema_errors]
    except RecursionError:
        return [SchemaIssue("", "nested too deeply for cloud-init's schema check "
                                "(maximum recursion depth exceeded)")]
    return []


def _at_cli_depth(fn: Callable[[], T]) -> T:
    """fn() in a fresh thread with as much recursion left as the CLI has (see
    `EXTRA_FRAMES`). Called with the isolation's lock held."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((False, exc))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + EXTRA_FRAMES)  # for every thread: kept short
    try:
        thread = threading.Thread(target=target, name="cloud-init-schema")
        thread.start()
        thread.join()
    finally:
        sys.setrecursionlimit(limit)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
