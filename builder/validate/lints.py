"""amibake's own checks on user-data, on top of cloud-init's schema.

- literal secrets (builder/manifest/secrets.py): private keys, AWS access key
  ids, passwords, tokens and API keys (cloud-config password keys, `name=value`
  assignments, credentials in URLs), reported by kind, never by value;
- the size EC2 accepts (16384 bytes, after gzip);
- top-level keys no cloud-init module reads (cloud-init 22.4 ignores them).
"""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from builder.manifest.secrets import AWS_KEY, KINDS, PASSWORD_ASSIGN, PRIVATE_KEY, URL_CREDENTIALS
from builder.render.assemble import CLOUD_CONFIG, USER_DATA_LIMIT, split_user_data
from builder.validate.schema import known_keys


@dataclass(frozen=True)
class LintIssue:
    """One lint finding; `where` is a dotted cloud-config path or a part name."""

    code: str  # secret-key | aws-key | password | size | unknown-key
    where: str
    message: str


GZIP_MAGIC = b"\x1f\x8b"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PASSWORD_KEYS = re.compile(r"(?i)^(passwd|password|plain_text_passwd|hashed_passwd|"
                           r"secret|token|aws_secret_access_key)$")


def lint_user_data(user_data: bytes) -> list[LintIssue]:
    issues: list[LintIssue] = []
    if len(user_data) > USER_DATA_LIMIT:
        gzipped = " after gzip" if user_data[:2] == GZIP_MAGIC else ""
        issues.append(LintIssue(
            "size", "user-data",
            f"user-data is {len(user_data)} bytes{gzipped}, "
            f"over EC2's limit of {USER_DATA_LIMIT} bytes",
        ))
    for part in split_user_data(user_data):
        name = part.filename or "user-data"
        config = _cloud_config(part.content) if part.content_type == CLOUD_CONFIG else None
        if config is None:
            issues += _scan(name, part.content)
            continue
        files = config.get("write_files") or []
        rest = {k: v for k, v in config.items() if k != "write_files"}
        # Everything but the files (scanned one by one below), comments included.
        comments = b"\n".join(
            ln for ln in part.content.splitlines() if ln.lstrip().startswith(b"#"))
        issues += _scan(name, comments + b"\n" + yaml.safe_dump(rest).encode())
        for key in sorted(set(config) - known_keys(), key=str):
            issues.append(LintIssue(
                "unknown-key", str(key),
                f"unknown cloud-config key {key!r}: no cloud-init module reads it",
            ))
        for path, key, value in _walk(rest, ""):
            if PASSWORD_KEYS.match(str(key)) and isinstance(value, str) and value:
                issues.append(LintIssue(
                    "password", path, f"literal secret in cloud-config key {key!r}"))
        for index, entry in enumerate(files if isinstance(files, list) else []):
            if isinstance(entry, dict):
                content = _decoded(entry)
                if content is not None:
                    issues += _scan(f"write_files.{index}", content,
                                    f" in {entry.get('path')}")
    return _unique(issues)


def _cloud_config(content: bytes) -> dict[str, Any] | None:
    try:
        config = yaml.load(content, Loader=_LOADER)
    except yaml.YAMLError:
        return None  # the schema check reports it
    return config if isinstance(config, dict) else None


def _unique(issues: list[LintIssue]) -> list[LintIssue]:
    seen: set[LintIssue] = set()
    return [i for i in issues if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


def _scan(where: str, content: bytes, what: str = "") -> list[LintIssue]:
    """Literal secrets in `content`, by kind; the text found is never shown."""
    issues: list[LintIssue] = []
    for pattern, kind in KINDS:
        code = LINT_CODES[pattern]
        if pattern.search(content) and all(i.code != code for i in issues):
            issues.append(LintIssue(code, where, f"{kind} is written literally{what} (not shown; "
                                    "use a secret reference: {ssm: NAME} or "
                                    "{secretsmanager: NAME})"))
    return issues


#: the lint code of each secret pattern
LINT_CODES = {PRIVATE_KEY: "secret-key", AWS_KEY: "aws-key", URL_CREDENTIALS: "password",
              PASSWORD_ASSIGN: "password"}


def _decoded(entry: dict[str, Any]) -> bytes | None:
    content = entry.get("content")
    if content is None:
        return None
    data = content.encode() if isinstance(content, str) else bytes(content)
    encoding = str(entry.get("encoding", "text")).lower()
    try:
        if encoding in ("b64", "base64", "gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
            data = base64.b64decode(data)
        if encoding.startswith("gz"):
            data = gzip.decompress(data)
    except (ValueError, OSError):
        return None
    return data


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, key, value
            yield from _walk(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{prefix}.{index}")
