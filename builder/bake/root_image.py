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
    placed   the cached image goes into the disk at the root partition's
             offset beside the layers (place_cached); once patched, only the
             blocks of the working copy that differ from the cached image are
             written over it (WorkingImage.changes, .write_into), and the others keep the
             digests kept beside the cached image (<key>.blocks: its
             builder.disk_digest block digests, taken again when the image
             file is not the one they were taken of), so the disk's digest
             reads only what the bake changed

A disk from a patched image holds what `mkfs.ext4 -d` of the whole tree
gives (contents, owners, modes, links, xattrs; tests/test_root_image.py
compares them); only its block and inode allocation differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.atomic import write_atomically
from builder.bake import disk
from builder.bake.cache import LayerCache
from builder.bake.disk import FS_ENV
from builder.bake.fs_patch import apply_patch, free_ranges, patch_script
from builder.bake.tree_diff import TreeDiff
from builder.disk_digest import BLOCK, BLOCKS, ZERO_BLOCK, block_count, block_digests, data_blocks
from builder.proc import run

#: Beside <key>.ext4 in the cache: its block digests (cached_block_digests).
BLOCKS_SUFFIX = ".blocks"
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


def cached_block_digests(image: Path) -> list[bytes]:
    """The cached image's block digests (builder.disk_digest), from <key>.blocks
    beside it, or taken now (and kept) when that file is missing or was taken
    of another file (the image's size, inode, mtime or ctime differ)."""
    fd = os.open(image, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        stamp = json.dumps({"algorithm": BLOCKS, "size": st.st_size, "ino": st.st_ino,
                            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns},
                           sort_keys=True).encode()
        kept = image.with_suffix(BLOCKS_SUFFIX)
        try:
            head, _, body = kept.read_bytes().partition(b"\n")
        except OSError:
            head, body = b"", b""
        if head == stamp and len(body) == 32 * block_count(st.st_size):
            return [body[i:i + 32] for i in range(0, len(body), 32)]
        digests = block_digests(fd, st.st_size)
        write_atomically(kept, stamp + b"\n" + b"".join(digests), mode=0o644, durable=False)
        return digests
    finally:
        os.close(fd)


def place_cached(image: Path, disk_fd: int, offset: int) -> None:
    """The cached image into the disk at `offset` (its holes left holes)."""
    src = os.open(image, os.O_RDONLY)
    try:
        disk.copy_into(src, disk_fd, offset)
    finally:
        os.close(src)


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

    def changes(self, image: Path) -> dict[int, bytes]:
        """The blocks (builder.disk_digest.BLOCK) of this working image that differ
        from the cached `image` it was copied from (zeros past its end), index →
        digest: the blocks that hold data in either are compared, only those
        that differ are hashed (a block of zeros: ZERO_BLOCK)."""
        src = os.open(image, os.O_RDONLY)
        try:
            image_size = os.fstat(src).st_size
            if self.size % BLOCK or image_size % BLOCK or image_size > self.size:
                raise ValueError("a root image is whole blocks, and the working image is "
                                 "no smaller than the cached one")
            blocks = sorted(set(data_blocks(self.fd, self.size))
                            | set(data_blocks(src, image_size)))
            with ThreadPoolExecutor(max_workers=2) as pool:
                parts = pool.map(lambda part: _changed(self.fd, src, image_size, part),
                                 [blocks[0::2], blocks[1::2]])
                return {i: d for part in parts for i, d in part}
        finally:
            os.close(src)

    def write_into(self, disk_fd: int, offset: int, changed: Mapping[int, bytes]) -> None:
        """Turn the cached image placed at `offset` in the disk (place_cached) into
        this working image: its `changed` blocks (changes()) written over it, a
        block of zeros as a hole."""
        if offset % BLOCK:
            raise ValueError("a root partition starts at a whole block")
        buf = bytearray(BLOCK)
        for i, digest in sorted(changed.items()):
            pos = i * BLOCK
            if digest == ZERO_BLOCK:
                disk.punch_holes(disk_fd, [(offset + pos, BLOCK)])
                continue
            if os.preadv(self.fd, [buf], pos) != BLOCK:
                raise ValueError("the working root image shrank while it was placed")
            view = memoryview(buf)
            done = 0
            while done < BLOCK:
                done += os.pwrite(disk_fd, view[done:], offset + pos + done)


def root_digests(cached: list[bytes], changed: Mapping[int, bytes], size: int) -> list[bytes]:
    """The block digests of a working image of `size` bytes: the cached image's
    (cached_block_digests), the `changed` blocks' (WorkingImage.changes) over them."""
    digests = cached + [ZERO_BLOCK] * (size // BLOCK - len(cached))
    for i, d in changed.items():
        digests[i] = d
    return digests


_ZEROS = bytes(BLOCK)


def _changed(work: int, image: int, image_size: int,
             blocks: list[int]) -> list[tuple[int, bytes]]:
    """(index, digest) of the `blocks` of `work` that differ from `image` (zeros
    past its end)."""
    mine, theirs = bytearray(BLOCK), bytearray(BLOCK)
    changed = []
    for i in blocks:
        pos = i * BLOCK
        if os.preadv(work, [mine], pos) != BLOCK:
            raise ValueError("the working root image shrank while it was compared")
        if pos < image_size:
            if os.preadv(image, [theirs], pos) != BLOCK:
                raise ValueError("the cached root image shrank while it was read")
            if mine == theirs:
                continue
        elif mine == _ZEROS:
            continue
        changed.append((i, ZERO_BLOCK if mine == _ZEROS else hashlib.sha256(mine).digest()))
    return changed
