"""The one check that a file holds an OpenSSH *public* key, and nothing else.

`--public-key FILE` options hand the key to others (the metadata service
serves it, EC2 imports it): a private key, a certificate, a PEM block or an
authorized_keys line with options given by mistake is refused with one line
that never quotes the file's content.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from builder.errors import UserError
from builder.inputs import read_input

#: key type → how many SSH wire strings its blob holds (the type name included)
KEY_FIELDS: dict[str, int] = {
    "ssh-ed25519": 2,
    "ssh-rsa": 3,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
MAX_KEY_FILE = 16 * 1024
_COMMENT = re.compile(r"[\x20-\x7e]*", re.ASCII)


def _wire_strings(blob: bytes) -> list[bytes] | None:
    out: list[bytes] = []
    i = 0
    while i < len(blob):
        if i + 4 > len(blob):
            return None
        n = int.from_bytes(blob[i:i + 4], "big")
        i += 4
        if i + n > len(blob):
            return None
        out.append(blob[i:i + n])
        i += n
    return out


def public_key_problem(text: str) -> str | None:
    """None when `text` is one OpenSSH public key line (`type base64 [comment]`)."""
    if "PRIVATE KEY" in text:
        return "this is a private key; give the .pub file beside it"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        return f"expected one public key line, found {len(lines)} lines"
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_FIELDS:
        return ("not an OpenSSH public key (expected `ssh-ed25519 AAAA... comment` or another "
                f"type: {', '.join(sorted(KEY_FIELDS))})")
    kind, b64 = parts[0], parts[1]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return "the key's base64 part is not valid base64"
    fields = _wire_strings(blob)
    if fields is None or len(fields) != KEY_FIELDS[kind] or fields[0] != kind.encode():
        return f"the key's data does not hold a {kind} public key"
    if len(parts) == 3 and not _COMMENT.fullmatch(parts[2]):
        return "the key's comment must be printable ASCII"
    return None


def read_public_key(path: Path | str) -> str:
    """The one public key line in `path`, or a one-line UserError."""
    data = read_input(path, MAX_KEY_FILE, "public key")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    problem = ("not an OpenSSH public key (the file is not ASCII text)" if not text and data
               else public_key_problem(text))
    if problem:
        raise UserError(f"public key {path}: {problem}",
                        hint="an OpenSSH public key file, such as ~/.ssh/id_ed25519.pub")
    return text.strip()
