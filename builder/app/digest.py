"""The tree digest: what an app tree holds, independent of when and where it was made.

sha256 over, for every entry in byte order of its relative path: the path,
its kind (directory, file, link), the executable bit of a file, and the
sha256 of a file's bytes or a link's target. Timestamps, owners and the
other mode bits do not count, so a fresh checkout of the same commit has
the same digest as yesterday's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def tree_digest(root: Path) -> str:
    """`sha256:<hex>` of the tree at `root` (see the module doc)."""
    h = hashlib.sha256(b"amibake-app-tree-1\0")
    for rel in sorted(_entries(root), key=lambda r: r.encode()):
        path = root / rel
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            h.update(b"d\0" + rel.encode() + b"\0")
        elif stat.S_ISLNK(st.st_mode):
            h.update(b"l\0" + rel.encode() + b"\0" + os.readlink(path).encode() + b"\0")
        else:
            x = b"x" if st.st_mode & 0o111 else b"-"
            h.update(b"f\0" + rel.encode() + b"\0" + x + _file_sha256(path) + b"\0")
    return "sha256:" + h.hexdigest()


def _entries(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root)
        for name in (*dirnames, *filenames):
            found.append((here / name).as_posix())
    return found


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest()
