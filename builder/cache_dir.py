"""Where amibake keeps what it can make again: layers, verdicts, compiled templates."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def default_cache_dir() -> Path:
    """$AMIBAKE_CACHE_DIR, else $XDG_CACHE_HOME/amibake, else ~/.cache/amibake."""
    env = os.environ.get("AMIBAKE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "amibake"


def code_identity(label: str, files: Iterable[Path]) -> str | None:
    """A digest naming the code (and data files) a cached result came from: amibake's
    version and each file's size and modification time. A change to any of them
    makes a new name, so an old result is never read again. None when a file is
    missing."""
    import builder

    h = hashlib.sha256(f"{label} {builder.__version__}\n".encode())
    for path in files:
        try:
            st = path.stat()
        except OSError:
            return None
        h.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class DiskMemo:
    """Results of a pure function of bytes, kept under the cache directory in
    <name>/<code identity>/, keyed by the SHA-256 of the input. Best effort: a
    result that cannot be read or written is computed again."""

    def __init__(self, name: str, code: Iterable[Path], *, also: str = "") -> None:
        """`also`: anything else the result depends on (a library's version)."""
        identity = code_identity(f"{name} {also}" if also else name, code)
        self.dir = None if identity is None else default_cache_dir() / name / identity

    def get(self, data: bytes) -> bytes | None:
        if self.dir is None:
            return None
        try:
            return self._path(data).read_bytes()
        except OSError:
            return None

    def put(self, data: bytes, result: bytes) -> None:
        if self.dir is None:
            return
        from builder.atomic import write_atomically

        path = self._path(data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(path, result, mode=0o600)
        except OSError:
            pass

    def _path(self, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        assert self.dir is not None
        return self.dir / digest[:2] / digest
