"""What never enters the image from an app's source tree.

Version control, logs, scratch, installed JavaScript packages, local
environment files, Rails' master key and credential keys, private keys and
local file storage. A rule names a path relative to the app's root (POSIX,
no leading `/`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

#: Directory names left out wherever they appear.
ANYWHERE_DIRS = frozenset({".git", "node_modules"})
#: Directories left out at the app's top level (Rails' writable directories).
TOP_DIRS = frozenset({"log", "tmp", "storage"})
#: File patterns (against the path relative to the app root).
FILE_PATTERNS: tuple[str, ...] = (
    "config/master.key",
    "config/credentials/*.key",
)
#: File-name patterns left out wherever they appear.
NAME_PATTERNS: tuple[str, ...] = (".env", ".env.*", ".git")
#: Names whose content is checked for a private key.
KEY_FILE_PATTERNS: tuple[str, ...] = ("*.pem", "*.key")
PRIVATE_KEY_MARK = b"PRIVATE KEY-----"

#: One line for the README and `--help`: what is left out.
SUMMARY = (".git, node_modules/, log/, tmp/, storage/, .env*, config/master.key, "
           "config/credentials/*.key, private keys in *.pem/*.key")


def excluded_dir(rel: PurePosixPath) -> bool:
    """Is the directory at `rel` (relative to the app root) left out, with all it holds?"""
    return rel.name in ANYWHERE_DIRS or (len(rel.parts) == 1 and rel.name in TOP_DIRS)


def excluded_file(rel: PurePosixPath, path: Path) -> bool:
    """Is the file (or link) at `rel` left out? `path` is where to read it."""
    text = rel.as_posix()
    if any(fnmatch.fnmatchcase(rel.name, p) for p in NAME_PATTERNS):
        return True
    if any(fnmatch.fnmatchcase(text, p) for p in FILE_PATTERNS):
        return True
    if any(fnmatch.fnmatchcase(rel.name, p) for p in KEY_FILE_PATTERNS) and \
            not path.is_symlink() and path.is_file():
        with path.open("rb") as f:
            return PRIVATE_KEY_MARK in f.read(1 << 20)
    return False
