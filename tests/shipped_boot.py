"""The on-instance scripts as an instance gets them (shared modules inlined,
docstrings stripped: builder.render.base.boot_files), written once per test
run, so the tests run what ships rather than the repository's sources."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from builder.render.base import boot_files

_DIR: list[Path] = []


def shipped(name: str) -> Path:
    """The shipped /usr/lib/amibake/<name> (or unit), as a file on this host."""
    if not _DIR:
        directory = Path(tempfile.mkdtemp(prefix="amibake-shipped-boot-"))
        atexit.register(shutil.rmtree, directory, True)
        for file in boot_files():
            target = directory / file.path.rpartition("/")[2]
            target.write_bytes(file.content)
            target.chmod(file.mode)
        _DIR.append(directory)
    path = _DIR[0] / name
    if not path.exists():
        raise FileNotFoundError(f"no shipped boot file {name}")
    return path
