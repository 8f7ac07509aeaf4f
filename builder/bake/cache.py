"""The content-addressed layer cache: finished base trees as `tar --zstd`.

    <cache>/base/<key>.tar.zst   the tree (owners, modes, xattrs kept)
    <cache>/base/<key>.json      what it holds: spec, kernel, packages, sizes
    <cache>/base/<key>.tree/     the same tree unpacked: a bake takes a copy
                                 made of hard links (`cp -al`, about a second);
                                 the config layer replaces files, never edits one
    <cache>/app/<key>.tree/      a built app layer (app.root after the app's build),
                                 checked out by hard links like the base tree
    <cache>/app/<key>.purge/     the purge of the build-only packages from a base
                                 layer, replayed by later bakes (purge_cache)
    <cache>/rootfs/<key>.ext4    the root filesystem of a base tree (mkfs -d), which
    <cache>/rootfs/<key>.json    a bake copies and patches (builder.bake.root_image),
    <cache>/rootfs/<key>.blocks  and its block digests (builder.disk_digest)
    <cache>/work/<pid>-<rand>/   a bake's scratch space (removed by the bake;
                                 `cache prune` removes those of dead processes)
    <cache>/work/<pid>-removing-<rand>/  a finished bake's work tree, which a
                                 detached `rm -rf` is removing
    <cache>/boot/<name>-<version>-<pid>/  serial logs of a failed boot test,
                                 kept for reading; `cache prune` removes them

The key is the sha256 of every input of the layer (BaseSpec.key), so a hit
is exact by construction; entries are written to a temp name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.cache_dir import (
    default_cache_dir as default_cache_dir,  # its home; imported from here too
)
from builder.proc import run

TAR_OPTIONS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")


@dataclass(frozen=True)
class CacheEntry:
    key: str
    archive: Path
    meta: dict[str, Any]
    size: int
    last_used: float


class LayerCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_dir = root / "base"
        self.work_root = root / "work"
        self.boot_logs = root / "boot"
        self.app_dir = root / "app"
        self.rootfs_dir = root / "rootfs"

    # ------------------------------------------------------------- base layers

    def archive(self, key: str) -> Path:
        return self.base_dir / f"{key}.tar.zst"

    def _meta_path(self, key: str) -> Path:
        return self.base_dir / f"{key}.json"

    def tree(self, key: str) -> Path:
        return self.base_dir / f"{key}.tree"

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry `key`; None when absent or unreadable (a miss: a bake
        rebuilds it, `cache prune` removes it)."""
        archive, meta_path = self.archive(key), self._meta_path(key)
        if not (archive.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            size, used = archive.stat().st_size, meta_path.stat().st_mtime
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        return CacheEntry(key, archive, meta, size, used)

    def corrupt(self) -> list[Path]:
        """Archives whose description is missing or unreadable."""
        if not self.base_dir.is_dir():
            return []
        return sorted(p for p in self.base_dir.glob("*.tar.zst")
                      if not p.name.startswith(".")
                      and self.lookup(p.name.removesuffix(".tar.zst")) is None)

    def staging_tree(self, key: str) -> Path:
        """An empty directory to build the layer `key` in (then `store` it)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", suffix=".tree",
                                     dir=self.base_dir))

    def store(self, key: str, tree: Path, meta: dict[str, Any]) -> CacheEntry:
        """Archive `tree` under `key` (atomically: temp file, then rename).

        A tree from `staging_tree` is kept as the unpacked copy too (renamed).
        """
        self.base_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{key[:12]}-", dir=self.base_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        meta_tmp = tmp.with_suffix(".json")
        try:
            run(["tar", "--create", "--file", tmp, "--use-compress-program=zstd -T0 -3",
                 *TAR_OPTIONS, "-C", tree, "."])
            tmp.chmod(0o644)
            meta_tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            if tree.parent == self.base_dir and tree.name.startswith(".tmp-"):
                self._drop_tree(key)
                os.replace(tree, self.tree(key))
            os.replace(tmp, self.archive(key))
            os.replace(meta_tmp, self._meta_path(key))
        finally:
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
        entry = self.lookup(key)
        assert entry is not None
        return entry

    def extract(self, entry: CacheEntry, dest: Path) -> None:
        """Unpack a cached tree into `dest` and mark the entry used."""
        dest.mkdir(parents=True, exist_ok=True)
        run(["tar", "--extract", "--file", entry.archive, "--use-compress-program=zstd -T0",
             *TAR_OPTIONS, "--same-permissions", "--same-owner", "-C", dest])
        os.utime(self._meta_path(entry.key))

    def unpacked(self, entry: CacheEntry) -> Path:
        """The layer's unpacked tree (unpacked from its archive when missing).

        Never changed once there: checkouts share its files' inodes.
        """
        tree = self.tree(entry.key)
        if not tree.is_dir():
            unpacking = self.staging_tree(entry.key)
            try:
                self.extract(entry, unpacking)
                os.replace(unpacking, tree)
            finally:
                shutil.rmtree(unpacking, ignore_errors=True)
        return tree

    def checkout(self, entry: CacheEntry, dest: Path) -> None:
        """A copy of the layer's tree at `dest` (absent), made of hard links.

        Files in `dest` share their inodes with the cache: whoever changes the
        copy must replace files (unlink, then write), never write into them.
        """
        run(["cp", "-a", "--link", self.unpacked(entry), dest])
        os.utime(self._meta_path(entry.key))

    def _drop_tree(self, key: str) -> None:
        tree = self.tree(key)
        if tree.exists():
            doomed = Path(tempfile.mkdtemp(prefix=".tmp-drop-", dir=self.base_dir))
            os.replace(tree, doomed / "tree")
            shutil.rmtree(doomed, ignore_errors=True)

    def entries(self) -> list[CacheEntry]:
        """Cached base layers, most recently used first."""
        if not self.base_dir.is_dir():
            return []
        found = [self.lookup(p.name.removesuffix(".tar.zst"))
                 for p in self.base_dir.glob("*.tar.zst") if not p.name.startswith(".")]
        return sorted((e for e in found if e), key=lambda e: e.last_used, reverse=True)

    # -------------------------------------------------------------- app layers

    def app_tree(self, key: str) -> Path | None:
        """The cached app layer `key` (marked used), or None."""
        tree = self.app_dir / f"{key}.tree"
        if not tree.is_dir() or tree.is_symlink():
            return None
        os.utime(tree)
        return tree

    @contextlib.contextmanager
    def app_staging(self, key: str) -> Iterator[Path]:
        """A path (absent) to copy a built app layer to; renamed into the cache as
        `key` when the block ends without an error, removed otherwise."""
        self.app_dir.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.app_dir))
        try:
            yield holder / "tree"
            final = self.app_dir / f"{key}.tree"
            if (holder / "tree").is_dir() and not final.exists():
                os.replace(holder / "tree", final)
        finally:
            shutil.rmtree(holder, ignore_errors=True)

    def purge_delta(self, key: str) -> Path | None:
        """The recorded purge `key` (builder.bake.purge_cache), marked used, or None."""
        kept = self.app_dir / f"{key}.purge"
        if not (kept / "delta.json").is_file() or kept.is_symlink():
            return None
        os.utime(kept)
        return kept

    @contextlib.contextmanager
    def purge_staging(self, key: str) -> Iterator[Path]:
        """A path (absent) to record a purge in; it replaces the recorded purge `key`
        when the block ends without an error and the path exists, else it goes."""
        self.app_dir.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.app_dir))
        try:
            yield holder / "purge"
            final = self.app_dir / f"{key}.purge"
            if (holder / "purge").is_dir():
                if final.exists():
                    os.replace(final, holder / "old")
                os.replace(holder / "purge", final)
        finally:
            shutil.rmtree(holder, ignore_errors=True)

    def app_entries(self) -> list[Path]:
        """Cached app layers, most recently used first."""
        return self._used_first("*.tree")

    def purge_entries(self) -> list[Path]:
        """Recorded purges, most recently used first."""
        return self._used_first("*.purge")

    def _used_first(self, pattern: str) -> list[Path]:
        if not self.app_dir.is_dir():
            return []
        found = [p for p in self.app_dir.glob(pattern) if not p.name.startswith(".")]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    # --------------------------------------------------------- root fs images

    def root_image(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The cached root filesystem `key` and its description (marked used), or None."""
        image, meta_path = self.rootfs_dir / f"{key}.ext4", self.rootfs_dir / f"{key}.json"
        try:
            meta = json.loads(meta_path.read_text())
            if not image.is_file() or not isinstance(meta, dict):
                return None
            os.utime(meta_path)
        except (OSError, ValueError):
            return None
        return image, meta

    @contextlib.contextmanager
    def root_image_staging(self, key: str, meta: dict[str, Any]) -> Iterator[Path]:
        """A path (absent) to write the root filesystem `key` to; kept (with `meta`)
        when the block ends without an error, removed otherwise."""
        self.rootfs_dir.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.rootfs_dir))
        try:
            yield holder / "image"
            (holder / "image").chmod(0o644)
            (holder / "meta").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            os.replace(holder / "image", self.rootfs_dir / f"{key}.ext4")
            os.replace(holder / "meta", self.rootfs_dir / f"{key}.json")
        finally:
            shutil.rmtree(holder, ignore_errors=True)

    def root_images(self) -> list[tuple[Path, dict[str, Any]]]:
        """Cached root filesystems (image, description), most recently used first;
        an image without a readable description is listed with {}."""
        if not self.rootfs_dir.is_dir():
            return []
        found = []
        for image in self.rootfs_dir.glob("*.ext4"):
            if image.name.startswith("."):
                continue
            meta_path = image.with_suffix(".json")
            try:
                meta = json.loads(meta_path.read_text())
                used = meta_path.stat().st_mtime
            except (OSError, ValueError):
                meta, used = {}, 0.0
            found.append((image, meta if isinstance(meta, dict) else {}, used))
        found.sort(key=lambda f: f[2], reverse=True)
        return [(image, meta) for image, meta, _ in found]

    # -------------------------------------------------------------- scratch

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A scratch directory on the cache's filesystem, always removed."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.work_root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def remove_later(self, tree: Path) -> Path:
        """Remove `tree` (a bake's work tree, in its workdir) in the background:
        it is moved out of the workdir and a detached `rm -rf` takes it, so the
        bake does not wait for tens of thousands of unlinks. The name keeps this
        process's id: `cache prune` removes what a killed `rm` left. Returns
        the name it has until `rm` is done (which may be at once)."""
        doomed = self.work_root / f"{os.getpid()}-removing-{os.urandom(4).hex()}"
        os.replace(tree, doomed)
        subprocess.Popen(["rm", "-rf", "--one-file-system", str(doomed)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return doomed

    # -------------------------------------------------------------- prune

    def prune(self, keep: int) -> list[Path]:
        """Keep the `keep` most recently used layers; drop corrupt entries and
        leftovers of dead bakes (whatever they are: files, dirs, dangling links)."""
        removed: list[Path] = []
        for entry in self.entries()[keep:]:
            self._drop_tree(entry.key)
            for path in (entry.archive, self._meta_path(entry.key)):
                path.unlink(missing_ok=True)
            removed.append(entry.archive)
        for archive in self.corrupt():
            key = archive.name.removesuffix(".tar.zst")
            self._drop_tree(key)
            _remove(self._meta_path(key))
            _remove(archive)
            removed.append(archive)
        if self.base_dir.is_dir():
            for tmp in self.base_dir.glob(".tmp-*"):
                try:
                    age = time.time() - tmp.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if age > 3600:
                    _remove(tmp)
                    removed.append(tmp)
        for tree in self.app_entries()[keep:] + self.purge_entries()[keep:]:
            _remove(tree)
            removed.append(tree)
        if self.app_dir.is_dir():
            for tmp in self.app_dir.glob(".tmp-*"):
                pid_dead = time.time() - tmp.lstat().st_mtime > 3600
                if pid_dead:
                    _remove(tmp)
                    removed.append(tmp)
        images = self.root_images()
        for image, _meta in images[keep:] + [i for i in images[:keep] if not i[1]]:
            for path in (image, image.with_suffix(".json"), image.with_suffix(".blocks")):
                _remove(path)
            removed.append(image)
        if self.rootfs_dir.is_dir():
            for path in self.rootfs_dir.iterdir():
                stray = path.suffix in (".json", ".blocks") and \
                    not path.with_suffix(".ext4").exists()
                try:
                    stale = path.name.startswith(".tmp-") and \
                        time.time() - path.lstat().st_mtime > 3600
                except FileNotFoundError:
                    continue
                if stray or stale:
                    _remove(path)
                    removed.append(path)
        if self.boot_logs.is_dir():
            for logs in self.boot_logs.iterdir():
                pid = logs.name.rpartition("-")[2]
                if not (pid.isdigit() and _alive(int(pid))):
                    _remove(logs)
                    removed.append(logs)
        if self.work_root.is_dir():
            for work in self.work_root.iterdir():
                pid = work.name.partition("-")[0]
                if not (pid.isdigit() and _alive(int(pid))):
                    _remove(work)
                    removed.append(work)
        return removed


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
