"""What a bake changed in its checkout of a cached tree: exact, by inode.

A bake's tree starts as `cp -a --link` of a cached tree (LayerCache.checkout):
every file, link and special file shares its inode with the cache, every
directory is a copy. The config layer, the app layer and the purge of the
build-only packages only ever replace files (unlink, then create) and never
write into a shared inode, so comparing the two trees side by side is exact:

    same name, same inode                     unchanged (content and metadata)
    same name, other inode or other type      removed from the base, then added
    name only in the tree                     added (a directory: its subtree)
    name only in the base                     removed (a directory: its subtree)
    directory in both                         changed when its mode, owner,
                                              mtime or xattrs differ, or an
                                              entry was added or removed

The walk reads directories only (the inode numbers come with the entries);
it lstats the directories of both trees and the added entries.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Added:
    """An entry of the tree the base does not have (parents come before children)."""

    path: str  # in the image: "/etc/amibake/roles.json"
    st: os.stat_result


@dataclass
class TreeDiff:
    #: entries of the base to remove, children before their directory
    removed: list[tuple[str, bool]] = field(default_factory=list)  # (path, is_dir)
    #: entries to add, parents before children
    added: list[Added] = field(default_factory=list)
    #: directories in both whose attributes must be set again (path, lstat in the tree)
    changed_dirs: list[Added] = field(default_factory=list)
    #: xattrs a directory in both lost: (path, name)
    xattrs_removed: list[tuple[str, str]] = field(default_factory=list)
    #: inode → a path of the tree, for every non-directory the walk saw unchanged
    unchanged_inodes: dict[int, str] = field(default_factory=dict)
    #: inode → how many paths of the tree have it (non-directories)
    links: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added or self.changed_dirs)

    def added_blocks(self) -> int:
        """Bytes the added entries take (st_blocks; hard links counted once)."""
        seen: set[int] = set()
        total = 0
        for a in self.added:
            if a.st.st_ino not in seen:
                seen.add(a.st.st_ino)
                total += a.st.st_blocks * 512
        return total


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def _scan(path: str) -> dict[str, os.DirEntry[str]]:
    with os.scandir(path) as it:
        return {e.name: e for e in it}


def _dir_attrs(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)


def diff_trees(tree: Path, base: Path) -> TreeDiff:
    """The changes that turn `base` into `tree` (see the module doc)."""
    diff = TreeDiff()
    _compare(diff, str(tree), str(base), "")
    return diff


def _compare(diff: TreeDiff, tree: str, base: str, rel: str) -> None:
    here = _scan(tree + rel or "/")
    there = _scan(base + rel or "/")
    entries_changed = False
    for name in sorted(there.keys() - here.keys()):
        entries_changed = True
        _remove(diff, base, f"{rel}/{name}", there[name].is_dir(follow_symlinks=False))
    for name in sorted(here):
        path = f"{rel}/{name}"
        mine, theirs = here[name], there.get(name)
        if mine.is_dir(follow_symlinks=False):
            if theirs is not None and theirs.is_dir(follow_symlinks=False):
                _compare(diff, tree, base, path)
                continue
            entries_changed = True
            if theirs is not None:
                _remove(diff, base, path, False)
            _add_subtree(diff, tree, path)
            continue
        ino = mine.inode()
        diff.links[ino] = diff.links.get(ino, 0) + 1
        if theirs is not None and not theirs.is_dir(follow_symlinks=False) \
                and theirs.inode() == ino:
            diff.unchanged_inodes.setdefault(ino, path)
            continue
        entries_changed = True
        if theirs is not None:
            _remove(diff, base, path, theirs.is_dir(follow_symlinks=False))
        diff.added.append(Added(path, os.lstat(tree + path)))
    if not rel:
        return  # the root directory: mkfs -d gives it its own attributes (but xattrs)
    st = os.lstat(tree + rel)
    now, before = _xattrs(tree + rel), _xattrs(base + rel)
    if entries_changed or _dir_attrs(st) != _dir_attrs(os.lstat(base + rel)) or now != before:
        diff.changed_dirs.append(Added(rel, st))
    diff.xattrs_removed += [(rel, name) for name in sorted(before.keys() - now.keys())]


def _remove(diff: TreeDiff, base: str, path: str, is_dir: bool) -> None:
    if is_dir:
        for name, entry in sorted(_scan(base + path).items()):
            _remove(diff, base, f"{path}/{name}", entry.is_dir(follow_symlinks=False))
    diff.removed.append((path, is_dir))


def _add_subtree(diff: TreeDiff, tree: str, path: str) -> None:
    st = os.lstat(tree + path)
    diff.added.append(Added(path, st))
    if not stat.S_ISDIR(st.st_mode):
        diff.links[st.st_ino] = diff.links.get(st.st_ino, 0) + 1
        return
    for name in sorted(_scan(tree + path)):
        _add_subtree(diff, tree, f"{path}/{name}")
