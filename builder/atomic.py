"""The one way amibake replaces a file: never half-written, never through a link.

`write_atomically(path, data)` writes a private temporary file beside
`path` (created with O_EXCL and mode 0600 from the start, so a secret is
never readable by others, not even for a moment), fsyncs it, gives it its
final mode, renames it over `path` and fsyncs the directory, so that after a
crash `path` holds either the old bytes or the new ones.

`open_private(path)` opens a new file for writing that nobody else can read
and that cannot be a planted symlink (O_EXCL|O_NOFOLLOW), for callers that
stream into a file themselves and rename it when done.
"""

from __future__ import annotations

import os
from pathlib import Path


def open_private(path: Path | str, mode: int = 0o600) -> int:
    """A new file at `path`, O_EXCL|O_NOFOLLOW, for writing; refuses an existing one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, mode)


def temp_beside(path: Path) -> Path:
    """An unpredictable name in `path`'s directory for a file to be renamed onto it."""
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path | str, data: bytes | str, *, mode: int | None = None,
                     durable: bool = True, sync_dir: bool = True) -> None:
    """Replace `path` with `data`.

    `mode`: the file's final permission bits; default: keep those of the file
    being replaced, or 0644 for a new file (0600 is the caller's choice for
    secrets and state). `durable=False` skips the fsyncs (caches, scratch).
    `sync_dir=False` fsyncs the data but not the directory: after a crash
    `path` still holds the old bytes or the new ones, but the replacement
    itself may be lost (half the cost, for a write a later durable one
    supersedes).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = temp_beside(path)
    fd = open_private(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and sync_dir:
        fsync_dir(path.parent)
