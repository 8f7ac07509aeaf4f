"""Paths inside an image tree, resolved as a chroot into the tree would.

The tree comes from packages: its symlinks point where they point on the
running image (`var/run -> /run`, `usr/lib/ssl/private -> /etc/ssl/private`,
`../../..`). Followed on the build host they lead out of the tree, so every
write, chown, chmod and mkdir of the bake goes through `in_tree`: each
component is looked up inside the tree, an absolute link target restarts
from the tree's root, and `..` never climbs above it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from builder.errors import UserError

#: As the kernel's limit on links followed in one lookup.
MAX_LINKS = 40


def in_tree(root: Path, path: str | PurePosixPath, *, follow_last: bool = True) -> Path:
    """The host path of the image's `path` (absolute in the image), inside `root`.

    Every directory on the way is a real directory of the tree (or does not
    exist yet); the last component is followed only with `follow_last`, so
    a caller that replaces a file never writes through a link.
    """
    pending = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, name)
        if (pending or follow_last) and host.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise UserError(f"too many levels of symbolic links in the image at {path}")
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                resolved = []
            pending[:0] = target.parts[1:] if target.is_absolute() else target.parts
            continue
        resolved.append(name)
    return root.joinpath(*resolved)


def make_dirs(root: Path, path: str | PurePosixPath, mode: int = 0o755) -> Path:
    """mkdir -p of the image's `path` inside the tree; the directory's host path."""
    target = in_tree(root, path)
    target.mkdir(parents=True, exist_ok=True, mode=mode)
    return target


def replace_file(root: Path, path: str | PurePosixPath, content: bytes) -> Path:
    """A new file at the image's `path`; whatever was there (file or link) is unlinked.

    Never writes into an existing file: the tree's files are hard links
    shared with the layer cache.
    """
    target = in_tree(root, path, follow_last=False)
    make_dirs(root, PurePosixPath("/", path).parent)
    if target.is_symlink() or target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return target


def set_owner_mode(root: Path, path: str | PurePosixPath, uid: int, gid: int,
                   mode: int | None = None) -> None:
    """chown (and chmod) the image's `path` itself, never what a link points to."""
    target = in_tree(root, path, follow_last=False)
    if target.is_symlink():
        os.chown(target, uid, gid, follow_symlinks=False)
        return
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, uid, gid)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def copy_tree(root: Path, src: str, dest: str, uid: int, gid: int, dir_mode: int) -> None:
    """Copy the image's directory `src` into `dest` (made beforehand), owned by uid:gid.

    Links are copied as links (as useradd copies /etc/skel), never followed.
    """
    source = in_tree(root, src)
    if not source.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(source):
        rel = PurePosixPath(dest, Path(dirpath).relative_to(source).as_posix())
        for name in sorted(dirnames + filenames):
            entry = Path(dirpath, name)
            image_path = rel / name
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = in_tree(root, image_path, follow_last=False)
                target.unlink(missing_ok=True)
                os.symlink(os.readlink(entry), target)
                set_owner_mode(root, image_path, uid, gid)
            elif stat.S_ISDIR(st.st_mode):
                in_tree(root, image_path, follow_last=False).mkdir(mode=dir_mode, exist_ok=True)
                set_owner_mode(root, image_path, uid, gid, dir_mode)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    replace_file(root, image_path, f.read())
                set_owner_mode(root, image_path, uid, gid, st.st_mode & 0o777)
