"""The purge of the build-only packages, taken once per base layer and replayed.

Every bake with the team's own app purges the build-only packages (compilers,
headers: builder.app.rails_build.purge_build_packages) from its tree after the
app layer: `apt-get purge` in a chroot, 0.6 s, the same work each time for a
base layer. The first bake records what it changed, as builder.bake.tree_diff
sees it (by inode: the tree before the purge is a hard-linked copy), in
<cache>/app/<key>.purge/:

    delta.json   removed entries (with the inode each had: the base layer's),
                 added directories and the attributes of every directory the
                 purge added or changed
    files/       the entries it added (dpkg's status, its logs...), hard links

Later bakes replay it instead: remove, link the added files (the tree's files
share inodes with the cache, as a checkout's do: nobody writes into them),
set the directories' attributes. The key is the base layer, the packages and
the purge code, not the app or the rendered files: the purge never touches
app.root, and the config layer writes no file dpkg owns. A replay is checked
first and declined (the purge then runs and is recorded again) unless the
tree is, wherever the purge changes it, what the purge found: every removed
entry has the inode it had, every added one is absent, every removed
directory holds only entries the purge removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from builder.app import rails_build
from builder.bake.cache import LayerCache
from builder.bake.tree_diff import diff_trees
from builder.manifest.model import Manifest
from builder.proc import run

#: Part of the key: bump when what is recorded or how it is replayed changes.
PURGE_CODE_VERSION = "purge-1"
_PURGE_CODE = hashlib.sha256(Path(rails_build.__file__).read_bytes()).hexdigest()


def purge_key(base_key: str) -> str:
    doc = {"code": PURGE_CODE_VERSION, "base": base_key,
           "packages": list(rails_build.BUILD_ONLY_PACKAGES), "purge": _PURGE_CODE}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def purge(tree: Path, manifest: Manifest, base_key: str, cache: LayerCache,
          scratch: Path) -> bool:
    """The build-only packages purged from `tree`: replayed from the cache when it
    has the purge of this base layer and the tree is as the purge found it
    (True), else run and recorded (False)."""
    key = purge_key(base_key)
    kept = cache.purge_delta(key)
    if kept is not None and replay(kept, tree):
        return True
    before = scratch / "before-purge"
    run(["cp", "-a", "--link", tree, before])
    try:
        rails_build.purge_build_packages(tree, manifest)
        with cache.purge_staging(key) as keep:
            if not record(before, tree, keep):
                shutil.rmtree(keep, ignore_errors=True)  # nothing kept
    finally:
        shutil.rmtree(before, ignore_errors=True)
    return False


def _dir_attrs(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns]


def record(before: Path, after: Path, keep: Path) -> bool:
    """What turned `before` into `after`, kept in `keep` (absent); False (nothing
    kept) when it is not a change a replay can make: a directory's xattrs."""
    diff = diff_trees(after, before)
    if diff.xattrs_removed:
        return False
    removed = []
    for path, is_dir in diff.removed:
        removed.append([path, is_dir, 0 if is_dir else os.lstat(f"{before}{path}").st_ino])
    added_dirs, dirs = [], []
    files = keep / "files"
    files.mkdir(parents=True)
    for entry in diff.added:
        if os.listxattr(f"{after}{entry.path}", follow_symlinks=False) and \
                stat.S_ISDIR(entry.st.st_mode):
            return False
        if stat.S_ISDIR(entry.st.st_mode):
            added_dirs.append(entry.path)
            dirs.append([entry.path, *_dir_attrs(entry.st)])
            (files / entry.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        else:
            target = files / entry.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f"{after}{entry.path}", target, follow_symlinks=False)
    for entry in diff.changed_dirs:
        if os.listxattr(f"{after}{entry.path}", follow_symlinks=False) != \
                os.listxattr(f"{before}{entry.path}", follow_symlinks=False):
            return False
        dirs.append([entry.path, *_dir_attrs(entry.st)])
    added_files = [e.path for e in diff.added if not stat.S_ISDIR(e.st.st_mode)]
    doc = {"removed": removed, "added_dirs": added_dirs, "added_files": added_files,
           "dirs": dirs}
    (keep / "delta.json").write_text(json.dumps(doc) + "\n")
    return True


def _as_found(tree: Path, doc: dict[str, Any]) -> bool:
    """Whether `tree` is what the recorded purge found, wherever it changes it."""
    gone = {path for path, _, _ in doc["removed"]}
    for path, is_dir, ino in doc["removed"]:
        try:
            st = os.lstat(f"{tree}{path}")
        except FileNotFoundError:
            return False
        if is_dir:
            if not stat.S_ISDIR(st.st_mode) or any(
                    f"{path}/{name}" not in gone for name in os.listdir(f"{tree}{path}")):
                return False
        elif st.st_ino != ino or stat.S_ISDIR(st.st_mode):
            return False
    replaced = gone
    for path in (*doc["added_dirs"], *doc["added_files"]):
        if path not in replaced and os.path.lexists(f"{tree}{path}"):
            return False
    return True


def replay(kept: Path, tree: Path) -> bool:
    """The recorded purge applied to `tree`; False (the tree untouched) when the
    tree is not what the purge found."""
    try:
        doc = json.loads((kept / "delta.json").read_text())
    except (OSError, ValueError):
        return False
    if not _as_found(tree, doc):
        return False
    for path, is_dir, _ in doc["removed"]:  # children before their directory
        (os.rmdir if is_dir else os.unlink)(f"{tree}{path}")
    added_dirs = set(doc["added_dirs"])
    for path in sorted((*added_dirs, *doc["added_files"])):  # parents before children
        if path in added_dirs:
            os.mkdir(f"{tree}{path}", 0o700)
        else:
            os.link(kept / "files" / path.lstrip("/"), f"{tree}{path}",
                    follow_symlinks=False)
    for path, mode, uid, gid, _atime, _mtime in doc["dirs"]:
        os.chown(f"{tree}{path}", uid, gid)
        os.chmod(f"{tree}{path}", stat.S_IMODE(mode))
    for path, _mode, _uid, _gid, atime, mtime in sorted(doc["dirs"], reverse=True):
        os.utime(f"{tree}{path}", ns=(atime, mtime))
    return True
