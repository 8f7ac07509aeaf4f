"""Apply a TreeDiff to an ext4 filesystem with debugfs: no mount, no loop device.

The filesystem is a copy of the cached root image (mkfs -d of the base tree,
builder.bake.root_image); one `debugfs -w -f SCRIPT IMAGE` run turns it into
the filesystem of the bake's tree. Each entry gets what `mkfs.ext4 -d`
gives it (misc/create_inode.c: the same `write`, `mkdir`, `symlink` and
`mknod` code, then mode, owner, times and xattrs from lstat), with one
difference: times are clamped to FS_TIME (as SOURCE_DATE_EPOCH clamps in
reproducible builds: files the bake wrote get that time, older ones keep
theirs), and atime and ctime are the mtime, so equal inputs give an equal
filesystem. Hard links inside the tree stay hard links, counted as mkfs -d
counts them (the paths inside the tree).

    removed   rm (the link count drops; the inode goes with its last link), rmdir
    added     mkdir | write | symlink | mknod | ln to the inode's first path,
              then set_inode_field mode, uid, gid, atime, mtime, ctime; ea_set
    dirs      the attributes of every added or changed directory, last

debugfs reports failures on stderr and goes on: any line there but its
banner fails the patch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.bake.disk import FS_ENV, FS_TIME
from builder.bake.tree_diff import Added, TreeDiff
from builder.errors import UserError
from builder.proc import run


def quote(text: str) -> bytes:
    """One argument of a debugfs command line (lib/ss/parse.c: "..." with "" for ")."""
    raw = os.fsencode(text)
    if b"\n" in raw or b"\r" in raw or b"\0" in raw:
        raise UserError(f"the image has a file name with a line break: {text!r}",
                        hint="rename it: the root filesystem is written with debugfs")
    return b'"' + raw.replace(b'"', b'""') + b'"'


def _line(*words: str | bytes) -> bytes:
    return b" ".join(w if isinstance(w, bytes) else quote(w) for w in words) + b"\n"


#: What debugfs gives a new inode before any set_inode_field (create_inode.c):
#: `write` the host file's mode, `symlink` 0777, `mkdir` 0755; owner 0:0; every
#: time FS_TIME (E2FSPROGS_FAKE_TIME). Fields equal to these are not set again.
_CREATED_MODE = {stat.S_IFLNK: 0o120777, stat.S_IFDIR: 0o40755}


def _attrs(path: str, st: os.stat_result, *, created: bool = False) -> list[bytes]:
    """set_inode_field commands giving `path` the attributes of `st` (mkfs -d's
    set_inode_extra); for an inode just `created`, only those that differ."""
    t = min(int(st.st_mtime), FS_TIME)
    fields = []
    kind = stat.S_IFMT(st.st_mode)
    if not created or st.st_mode != _CREATED_MODE.get(kind, st.st_mode if kind ==
                                                       stat.S_IFREG else -1):
        fields.append(("mode", f"0{st.st_mode:o}"))
    if not created or st.st_uid:
        fields.append(("uid", str(st.st_uid)))
    if not created or st.st_gid:
        fields.append(("gid", str(st.st_gid)))
    if not created or t != FS_TIME:
        fields += [("atime", f"@{t}"), ("mtime", f"@{t}"), ("ctime", f"@{t}")]
    return [_line(b"sif", path, name.encode(), value.encode()) for name, value in fields]


def _xattrs(host: str, path: str, scratch: Path, n: list[int]) -> list[bytes]:
    lines = []
    for name in sorted(os.listxattr(host, follow_symlinks=False)):
        n[0] += 1
        value = scratch / f"xattr-{n[0]}"
        value.write_bytes(os.getxattr(host, name, follow_symlinks=False))
        lines.append(_line(b"ea_set", b"-f", str(value), path, name))
    return lines


def _mknod(path: str, st: os.stat_result) -> list[bytes]:
    """debugfs's mknod takes a name in the current directory, not a path."""
    parent, _, name = path.rpartition("/")
    if stat.S_ISFIFO(st.st_mode):
        kind = [b"p"]
    else:
        kind = [b"c" if stat.S_ISCHR(st.st_mode) else b"b",
                str(os.major(st.st_rdev)).encode(), str(os.minor(st.st_rdev)).encode()]
    return [_line(b"cd", parent or "/"), _line(b"mknod", name, *kind), _line(b"cd", "/")]


def patch_script(diff: TreeDiff, tree: Path, scratch: Path) -> bytes:
    """The debugfs commands that apply `diff` (entries of `tree`); values of
    xattrs are written to files in `scratch`."""
    out: list[bytes] = []
    for path, is_dir in diff.removed:
        out.append(_line(b"rmdir" if is_dir else b"rm", path))
    first_path = dict(diff.unchanged_inodes)  # inode → a path the image has it at
    relinked: set[int] = set()
    dirs: list[Added] = []
    n = [0]
    for entry in diff.added:
        st, path, host = entry.st, entry.path, f"{tree}{entry.path}"
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            out.append(_line(b"mkdir", path))
            out += _xattrs(host, path, scratch, n)
            dirs.append(entry)
            continue
        if st.st_ino in first_path:
            out.append(_line(b"ln", first_path[st.st_ino], path))
            relinked.add(st.st_ino)
            continue
        first_path[st.st_ino] = path
        if stat.S_ISREG(mode):
            out.append(_line(b"write", host, path))
        elif stat.S_ISLNK(mode):
            out.append(_line(b"symlink", path, os.readlink(host)))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            out += _mknod(path, st)
        else:
            raise UserError(f"the bake left a socket in the image at {path}",
                            hint="remove it: an image holds no sockets")
        out += _attrs(path, st, created=True)
        out += _xattrs(host, path, scratch, n)
        if diff.links.get(st.st_ino, 1) > 1:
            relinked.add(st.st_ino)
    for ino in sorted(relinked, key=lambda i: first_path[i]):
        out.append(_line(b"sif", first_path[ino], b"links_count",
                         str(diff.links[ino]).encode()))
    for path, name in diff.xattrs_removed:
        out.append(_line(b"ea_rm", path, name))
    for entry in diff.changed_dirs:
        out += _xattrs(f"{tree}{entry.path}", entry.path, scratch, n)
    for entry in dirs:
        out += _attrs(entry.path, entry.st, created=True)
    for entry in diff.changed_dirs:
        out += _attrs(entry.path, entry.st)
    return b"".join(out)


def apply_patch(target: str, script: Path) -> None:
    """Run `script` with debugfs -w on `target` (a file, or 'disk?offset=N')."""
    proc = run(["debugfs", "-w", "-f", script, target], capture=True, env=FS_ENV)
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise UserError(f"writing the root filesystem with debugfs failed: {errors[0]}",
                        hint=f"{len(errors)} error(s); run with --debug to see the commands")


def free_ranges(target: str) -> list[tuple[int, int]]:
    """The filesystem's free blocks as byte ranges (offset, length), from dumpe2fs."""
    out = run(["dumpe2fs", target], capture=True).stdout
    block = 0
    ranges = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Block size:"):
            block = int(line.split(":")[1])
        elif line.startswith("Free blocks:") and block:
            for part in line.removeprefix("Free blocks:").split(","):
                first, _, last = part.strip().partition("-")
                if first:
                    ranges.append((int(first) * block,
                                   (int(last or first) - int(first) + 1) * block))
    return ranges
