"""User-data assembly: #cloud-config text, multipart MIME, gzip. Deterministic.

Same input, same bytes: keys sorted, no timestamps, a MIME boundary derived
from the content, gzip with mtime 0.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from builder.cache_dir import DiskMemo
from builder.render.fragment import Part

#: EC2 refuses user-data over this many bytes (after base64 decoding).
USER_DATA_LIMIT = 16384
#: Raw user-data above this is gzipped (cloud-init decompresses it itself).
GZIP_THRESHOLD = 16 * 1024
CLOUD_CONFIG_HEADER = "#cloud-config"
CLOUD_CONFIG = "text/cloud-config"


class _Dumper(yaml.CSafeDumper):
    """libyaml's emitter (the pure-Python one is ~20x slower); block literals for
    multi-line text, so files read naturally in user-data."""


def _str_representer(dumper: yaml.CSafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def cloud_config(config: Mapping[str, Any], comments: Sequence[str] = ()) -> bytes:
    """`#cloud-config`, then `# ...` comment lines, then the YAML (keys sorted)."""
    body = yaml.dump(
        dict(config), Dumper=_Dumper, sort_keys=True, default_flow_style=False,
        allow_unicode=True, width=4096,
    )
    header = [CLOUD_CONFIG_HEADER] + [f"# {c}" for c in comments]
    return ("\n".join(header) + "\n" + body).encode()


def mime_boundary(parts: Sequence[Part]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        for field in (part.content_type, part.filename):
            digest.update(field.encode() + b"\0")
        digest.update(hashlib.sha256(part.content).digest())
    return f"==amibake-{digest.hexdigest()[:32]}=="


def multipart(parts: Sequence[Part]) -> bytes:
    """A multipart/mixed document cloud-init understands, byte-for-byte reproducible."""
    boundary = mime_boundary(parts)
    lines = [
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "MIME-Version: 1.0",
        "",
    ]
    for part in parts:
        try:
            text = part.content.decode("ascii")
            encoding = "7bit"
        except UnicodeDecodeError:
            text = base64.encodebytes(part.content).decode()
            encoding = "base64"
        lines += [
            f"--{boundary}",
            f'Content-Type: {part.content_type}; charset="utf-8"',
            "MIME-Version: 1.0",
            f"Content-Transfer-Encoding: {encoding}",
            f'Content-Disposition: attachment; filename="{part.filename}"',
            "",
            text,
        ]
    lines += [f"--{boundary}--", ""]
    return "\n".join(lines).encode()


def assemble(parts: Sequence[Part]) -> bytes:
    """One part as it is; several as multipart MIME."""
    if not parts:
        raise ValueError("user-data needs at least one part")
    if len(parts) == 1:
        return parts[0].content
    return multipart(parts)


def compress(raw: bytes) -> bytes:
    """gzip (mtime 0, so reproducible) when raw user-data exceeds 16 KiB. Level 9
    costs ~10 ms per role, so the result is kept between runs (a warm `validate`
    compresses nothing); a kept result is used only if it unpacks to `raw`."""
    if len(raw) <= GZIP_THRESHOLD:
        return raw
    memo = _gzip_memo()
    kept = memo.get(raw)
    if kept is not None and _unpacks_to(kept, raw):
        return kept
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    memo.put(raw, packed)
    return packed


def _unpacks_to(packed: bytes, raw: bytes) -> bool:
    try:
        return gzip.decompress(packed) == raw
    except (OSError, EOFError, zlib.error):
        return False


@functools.lru_cache(maxsize=1)
def _gzip_memo() -> DiskMemo:
    """Named for this module and the zlib that compressed (its output can change)."""
    return DiskMemo("user-data-gzip", [Path(__file__)], also=f"zlib {zlib.ZLIB_RUNTIME_VERSION}")


def split_user_data(user_data: bytes) -> tuple[Part, ...]:
    """The parts of assembled user-data (gunzipped, MIME split): for validation."""
    import email

    if user_data[:2] == b"\x1f\x8b":
        user_data = gzip.decompress(user_data)
    if not user_data.startswith(b"Content-Type: multipart/"):
        kind = CLOUD_CONFIG if user_data.startswith(CLOUD_CONFIG_HEADER.encode()) else (
            "text/x-shellscript" if user_data.startswith(b"#!") else "text/plain"
        )
        return (Part(kind, "user-data", user_data),)
    message = email.message_from_bytes(user_data)
    parts = []
    for sub in message.walk():
        if sub.is_multipart():
            continue
        payload = sub.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append(Part(sub.get_content_type(), sub.get_filename() or "", payload))
    return tuple(parts)
