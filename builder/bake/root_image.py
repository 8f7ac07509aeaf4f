"""The root filesystem of a bake: the base layer's, cached, patched with what the bake changed.

    cached   <cache>/rootfs/<key>.ext4: `mkfs.ext4 -d` of the base layer's
             unpacked tree, once per base layer (and FS_CODE_VERSION); sized
             with headroom for the config and app layers and the first boot
    working  a copy in memory (a memfd: debugfs's closing fsync costs nothing
             there), grown with resize2fs when the bake's additions need it
    patched  with the bake's changes (builder.bake.tree_diff: the checkout
             against the cached tree; builder.bake.fs_patch: one debugfs run);
             the blocks the removed files freed are punched out (as fstrim
             would), so the disk holds no more data than mkfs -d would write
    placed   into the disk at the root partition's offset by
             disk.place_and_hash, which hashes the whole disk in the same pass

A disk from a patched image holds what `mkfs.ext4 -d` of the whole tree
gives (contents, owners, modes, links, xattrs; tests/test_root_image.py
compares them); only its block and inode allocation differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.bake import disk
from builder.bake.cache import LayerCache
from builder.bake.disk import FS_ENV
from builder.bake.fs_patch import apply_patch, free_ranges, patch_script
from builder.bake.tree_diff import TreeDiff
from builder.proc import run

#: Part of the image's key: bump when mkfs's options or the sizing change.
FS_CODE_VERSION = "rootfs-2"
#: Room in the cached image for what the config and app layers add, beyond the
#: first boot's headroom (disk.root_fs_size): a bake grows the image only when
#: its additions need more. Free space in a sparse image costs nothing.
LAYER_ROOM = 256 * disk.MIB


@dataclass(frozen=True)
class RootFsSpec:
    """What the cached image is made from (all of it is in its key)."""

    base_key: str
    fs_uuid: str
    label: str

    def key(self) -> str:
        doc = {"code": FS_CODE_VERSION, "base": self.base_key, "uuid": self.fs_uuid,
               "label": self.label, "mkfs": disk.MKFS_OPTIONS}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cached_image(cache: LayerCache, spec: RootFsSpec,
                 base_tree: Path) -> tuple[Path, dict[str, Any], bool]:
    """The cached image of `base_tree`, its description, and whether it was made
    now (mkfs -d, when it was missing)."""
    key = spec.key()
    found = cache.root_image(key)
    if found is not None:
        return (*found, False)
    used, inodes = disk.tree_usage(base_tree)
    size = disk.root_fs_size(used, inodes) + LAYER_ROOM
    meta = {"key": key, "base_key": spec.base_key, "fs_uuid": spec.fs_uuid,
            "size": size, "used": used, "inodes": inodes, "code": FS_CODE_VERSION}
    with cache.root_image_staging(key, meta) as image:
        disk.make_root_fs(image, base_tree, size, spec.fs_uuid, spec.label)
    found = cache.root_image(key)
    assert found is not None
    return (*found, True)


class WorkingImage:
    """A writable copy of a cached image, in memory; `path` is for the e2fsprogs."""

    def __init__(self, image: Path, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.fd = os.memfd_create("amibake-rootfs", os.MFD_CLOEXEC)
        try:
            disk.copy_sparse(image, self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = os.fstat(self.fd).st_size

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        os.close(self.fd)

    def needed_size(self, diff: TreeDiff) -> int:
        """The size the bake's tree asks for (the cached image's sizing rule,
        the layers' additions counted in): more than `size` only when they
        outgrow LAYER_ROOM."""
        return disk.root_fs_size(int(self.meta["used"]) + diff.added_blocks(),
                                 int(self.meta["inodes"]) + len(diff.added))

    def grow(self, size: int) -> None:
        """resize2fs to `size` bytes (more block groups, so more inodes too)."""
        os.ftruncate(self.fd, size)
        run(["resize2fs", "-f", self.path, f"{size // 4096}"], capture=True, env=FS_ENV)
        self.size = size

    def patch(self, diff: TreeDiff, tree: Path, scratch: Path) -> None:
        """Apply `diff` (entries of `tree`); debugfs's script is kept in `scratch`."""
        scratch.mkdir(parents=True, exist_ok=True)
        script = scratch / "debugfs.script"
        script.write_bytes(patch_script(diff, tree, scratch))
        if diff:
            apply_patch(self.path, script)
        if diff.removed:  # freed blocks still hold the removed files' bytes
            disk.punch_holes(self.fd, free_ranges(self.path))
