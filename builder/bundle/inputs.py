"""Reading the small files a bundle verb is given (manifests, keys, certificates).

Bounded and checked before a byte is read: a directory, a device such as
/dev/zero, a FIFO or a file over the limit is a one-line UserError, never a
hang, a MemoryError or a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.errors import UserError


def read_small(path: Path, what: str, limit: int, hint: str = "check the path") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}", hint=hint) from None
    except PermissionError:
        raise UserError(f"cannot read the {what} {path}: permission denied",
                        hint="check its permissions") from None
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}",
                        hint=hint) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"the {what} {path} is a directory", hint=hint)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"the {what} {path} is not a regular file (a device, pipe or"
                            " socket)", hint=hint)
        if st.st_size > limit:
            raise UserError(f"the {what} {path} is {st.st_size} bytes, more than a {what}"
                            f" can be ({limit})", hint=hint)
        chunks, total = [], 0
        while total <= limit and (chunk := os.read(fd, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UserError(f"cannot read the {what} {path}: {exc.strerror or exc}",
                        hint=hint) from None
    finally:
        os.close(fd)
    if total > limit:  # it grew while being read
        raise UserError(f"the {what} {path} is more than {limit} bytes", hint=hint)
    return b"".join(chunks)
