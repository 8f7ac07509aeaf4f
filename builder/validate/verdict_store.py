"""cloud-init's schema verdicts kept on disk between runs of `amibake validate`.

Importing bookworm's cloud-init, PyYAML and jsonschema and loading the schema
is most of a `validate` run (~0.3 s of CPU before any document is checked, and
cloud-init's pure-Python YAML loader after). A verdict depends only on the
document's bytes and on the code that judged it, so it is kept under the cache
directory, keyed by:

- the identity of the judge: this file format, amibake's version, the size and
  modification time of builder/validate/schema.py and of the extracted Debian
  files the verdict comes from (cloud-init's schema module and JSON schema,
  its version, jsonschema, PyYAML, rfc3987). Re-extracting the packages or
  editing the check makes a new key: old verdicts are never read again;
- the SHA-256 of the document.

The tree's facts (cloud-init's version, the schema's top-level keys) are kept
beside the verdicts, so a run whose documents were all judged before never
imports cloud-init at all.

The cache is the user's own (as the bake cache is); still, an entry that does
not parse as what was written is ignored and the verdict computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.atomic import write_atomically
from builder.cache_dir import code_identity, default_cache_dir

FORMAT = 1

#: The files of the extracted tree (under dist-packages) a verdict comes from.
JUDGE_FILES = (
    "cloudinit/version.py",
    "cloudinit/safeyaml.py",
    "cloudinit/config/schema.py",
    "cloudinit/config/schemas/schema-cloud-config-v1.json",
    "jsonschema/__init__.py",
    "jsonschema/_format.py",
    "jsonschema/validators.py",
    "yaml/__init__.py",
    "rfc3987.py",
)


def judge_identity(dist: Path) -> str | None:
    """A digest naming the code that judges; None when a file is missing (the
    caller then loads the tree, which explains what is not set up)."""
    return code_identity(f"amibake-verdicts {FORMAT}",
                         [Path(__file__).with_name("schema.py")]
                         + [dist / rel for rel in JUDGE_FILES])


@dataclass(frozen=True)
class TreeFacts:
    """What `validate` needs to know about the tree besides verdicts."""

    version: str
    known_keys: frozenset[str]


class VerdictStore:
    """Verdicts and facts of one judge under `root`/<judge identity>/."""

    def __init__(self, root: Path, identity: str) -> None:
        self.dir = root / identity[:32]

    def facts(self) -> TreeFacts | None:
        doc = self._read(self.dir / "facts.json")
        if not isinstance(doc, dict):
            return None
        version, keys = doc.get("version"), doc.get("known_keys")
        if not isinstance(version, str) or not isinstance(keys, list) \
                or not all(isinstance(k, str) for k in keys):
            return None
        return TreeFacts(version, frozenset(keys))

    def save_facts(self, facts: TreeFacts) -> None:
        self._write(self.dir / "facts.json",
                    {"version": facts.version, "known_keys": sorted(facts.known_keys)})

    def get(self, data: bytes) -> list[tuple[str, str]] | None:
        """The issues (path, message) judged for these bytes, or None if not kept."""
        doc = self._read(self._entry(data))
        if not isinstance(doc, list):
            return None
        issues = []
        for item in doc:
            if not (isinstance(item, list) and len(item) == 2
                    and all(isinstance(x, str) for x in item)):
                return None
            issues.append((item[0], item[1]))
        return issues

    def put(self, data: bytes, issues: list[tuple[str, str]]) -> None:
        self._write(self._entry(data), [list(i) for i in issues])

    def _entry(self, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        return self.dir / digest[:2] / f"{digest}.json"

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            with open(path, "rb") as f:
                return json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _write(path: Path, doc: Any) -> None:
        """Best effort: a cache that cannot be written costs time, not correctness."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(path, json.dumps(doc, ensure_ascii=True), mode=0o600)
        except OSError:
            pass


def default_store(dist: Path) -> VerdictStore | None:
    """The store under amibake's cache directory, or None (missing files, or
    AMIBAKE_VERDICT_CACHE=0)."""
    if os.environ.get("AMIBAKE_VERDICT_CACHE", "1") == "0":
        return None
    identity = judge_identity(dist)
    if identity is None:
        return None
    return VerdictStore(default_cache_dir() / "cloud-init-verdicts", identity)
