"""Unpack a tar archive that is not trusted: nothing lands outside the directory.

Refused, before anything is written: absolute names, `..`, links (symbolic
or hard) that point outside the archive's tree, devices, FIFOs and any other
special file, and names that repeat. Owners are never restored; modes keep
their permission bits (setuid, setgid and sticky dropped).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from builder.errors import UserError

Fail = Callable[[str], UserError]


def _member_path(name: str) -> PurePosixPath | None:
    """The member's normalised relative path; None for the archive's root (`.`, `./`)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError
    parts = [p for p in pure.parts if p != "."]
    return PurePosixPath(*parts) if parts else None


def escapes(rel: PurePosixPath, link: str) -> bool:
    """Does a link at `rel` (relative to a tree's root) pointing to `link` leave the tree?"""
    target = PurePosixPath(link)
    if target.is_absolute():
        return True
    depth = len(rel.parts) - 1
    for part in target.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def extract_tar(archive: Path, dest: Path, fail: Fail) -> None:
    """Unpack `archive` (any compression tarfile reads) into `dest` (absent)."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, OSError) as err:
        raise fail(f"not a tar archive ({err})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError) as err:
            raise fail(f"a damaged tar archive ({err})") from None
        plan: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
        seen: set[PurePosixPath] = set()
        for m in members:
            try:
                rel = _member_path(m.name)
            except ValueError:
                raise fail(f"the archive names {m.name!r}: absolute or with '..'") from None
            if rel is None:
                continue
            if m.issym() and escapes(rel, m.linkname):
                raise fail(f"{rel}: a link that points outside the archive ({m.linkname})")
            if m.islnk():
                try:
                    if _member_path(m.linkname) is None:
                        raise ValueError
                except ValueError:
                    raise fail(f"{rel}: a hard link outside the archive") from None
            if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
                raise fail(f"{rel}: a device, FIFO or other special file")
            if rel in seen and not m.isdir():
                raise fail(f"{rel}: named twice in the archive")
            seen.add(rel)
            plan.append((rel, m))
        dest.mkdir(mode=0o755)
        for rel, m in plan:
            _place(tar, dest, rel, m, fail)


def _place(tar: tarfile.TarFile, dest: Path, rel: PurePosixPath, m: tarfile.TarInfo,
           fail: Fail) -> None:
    target = dest / rel
    parent = dest
    for part in rel.parts[:-1]:  # every parent a real directory, never a link
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            raise fail(f"{rel}: its directory {parent.relative_to(dest)} is not a directory")
        if not parent.exists():
            parent.mkdir(mode=0o755)
    mode = m.mode & 0o777
    if m.isdir():
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise fail(f"{rel}: a directory over another entry")
        target.mkdir(mode=0o755, exist_ok=True)
        os.chmod(target, mode | 0o700)
    elif m.issym():
        os.symlink(m.linkname, target)
    elif m.islnk():
        source = dest / PurePosixPath(m.linkname)
        if source.is_symlink() or not source.is_file():
            raise fail(f"{rel}: a hard link to {m.linkname}, which is not a file before it")
        os.link(source, target)
    else:
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, src:
            while block := src.read(1 << 20):
                out.write(block)
        os.chmod(target, mode)
