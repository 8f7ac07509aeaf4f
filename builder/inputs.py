"""The one way a verb reads a file the user named: bounded, one-line errors.

`read_input(path, limit, what)` reads at most `limit` bytes and refuses, as a
UserError naming the file, what cannot be an input: a missing or unreadable
file, a directory, a FIFO, anything larger than `limit` (checked before
reading for a regular file; a device such as /dev/zero is read only up to the
limit). `read_text_input` also decodes UTF-8 and names the line of the first
byte that is not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.errors import UserError

KiB, MiB = 1024, 1024 * 1024


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else (
        f"{n // KiB} KiB" if n >= KiB and n % KiB == 0 else f"{n} bytes")


def read_input(path: Path | str, limit: int, what: str = "file") -> bytes:
    """The bytes of `path` (at most `limit`), or a one-line UserError."""
    name = str(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise UserError(f"cannot read {what} {name}: {exc.strerror or exc}",
                        hint="check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {name} is a directory", hint="name a file")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise UserError(f"{what} {name} is not a regular file", hint="name a file")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise UserError(f"{what} {name} is too large ({st.st_size} bytes; "
                            f"at most {_size(limit)})", hint="is this the right file?")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UserError(f"cannot read {what} {name}: {exc.strerror or exc}",
                        hint="check the path and its permissions") from None
    finally:
        os.close(fd)
    if total > limit:
        raise UserError(f"{what} {name} is larger than {_size(limit)}",
                        hint="is this the right file?")
    return b"".join(chunks)


def decode_input(data: bytes, name: str, what: str = "file") -> str:
    """`data` as UTF-8, or a UserError with the line and column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise UserError(f"{name}:{line}:{col}: {what} is not UTF-8 text "
                        f"(byte 0x{data[exc.start]:02x})",
                        hint="save the file as UTF-8") from None


def read_text_input(path: Path | str, limit: int, what: str = "file") -> str:
    return decode_input(read_input(path, limit, what), str(path), what)
