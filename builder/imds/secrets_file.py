"""Secrets for `amibake imds serve`, from a private file or standard input,
never from the command line (where `ps` and shell history show them).

The format: one `NAME=VALUE` per line (the value is the rest of the line,
`=` included); blank lines and lines starting with `#` are skipped. A file
that its group or others may read is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from builder.errors import Location, Problem, UserError
from builder.inputs import decode_input, read_input

MAX_SECRETS = 1024 * 1024


def parse_secrets(text: str, name: str) -> dict[str, str]:
    """NAME=VALUE lines → a mapping; every bad line reported at once, never its value."""
    secrets: dict[str, str] = {}
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        where = Location(name, number, 1)
        if not sep or not key:
            problems.append(Problem(where, "expected NAME=VALUE"))
        elif any(c.isspace() for c in key) or not key.isprintable():
            problems.append(Problem(where, "a secret's name must not hold spaces or "
                                           "control characters"))
        elif key in secrets:
            problems.append(Problem(where, f"secret {key} is given twice"))
        else:
            secrets[key] = value
    if problems:
        raise UserError(f"{name}: {len(problems)} bad line(s) in the secrets",
                        hint="one NAME=VALUE per line; # starts a comment",
                        problems=tuple(problems))
    return secrets


def read_secrets_file(path: Path) -> dict[str, str]:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UserError(f"cannot read secrets file {path}: {exc.strerror or exc}",
                        hint="check the path") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        raise UserError(f"secrets file {path} may be read by others "
                        f"(mode {stat.S_IMODE(mode):04o})",
                        hint=f"chmod 600 {path}")
    data = read_input(path, MAX_SECRETS, "secrets file")
    return parse_secrets(decode_input(data, str(path), "secrets file"), str(path))


def read_secrets_stream(stream: BinaryIO, name: str = "<stdin>") -> dict[str, str]:
    data = stream.read(MAX_SECRETS + 1)
    if len(data) > MAX_SECRETS:
        raise UserError(f"{name}: the secrets are larger than {MAX_SECRETS} bytes")
    return parse_secrets(decode_input(data, name, "secrets"), name)
