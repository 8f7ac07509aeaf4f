"""A sparse raw GPT disk that boots by itself, built without loop devices.

Layout (the one Debian's cloud images use, root last so growpart can grow it):

    p14  BIOS boot partition (GRUB core.img)         1 MiB .. 4 MiB
    p15  EFI system partition (FAT, BOOTX64.EFI)     4 MiB .. 128 MiB
    p1   root ext4, label amibake-root               128 MiB .. sized to content

The disk file has the volume's size (sparse); the root partition is sized to
its content plus headroom and is grown to the whole volume at first boot by
cloud-init's growpart and resizefs.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.proc import run
from builder.sparse import data_extents

SECTOR = 512
MIB = 1 << 20
GIB = 1 << 30

BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

BIOS_START, BIOS_SIZE = 1 * MIB, 3 * MIB
ESP_START, ESP_SIZE = 4 * MIB, 124 * MIB
ROOT_START = 128 * MIB
GPT_BACKUP = 33 * SECTOR  # backup header + 128 entries at the disk's end


def derived_uuid(seed: str, purpose: str) -> str:
    """A UUID fixed by the build's inputs, so equal inputs give equal disks."""
    digest = hashlib.sha256(f"{purpose}\0{seed}".encode()).hexdigest()
    return str(uuid.UUID(hex=digest[:32], version=4))


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str
    name: str
    uuid: str


@dataclass(frozen=True)
class DiskLayout:
    size: int  # bytes
    disk_guid: str
    bios: Partition
    esp: Partition
    root: Partition


def plan_layout(disk_size: int, root_size: int, seed: str) -> DiskLayout:
    """Place the partitions; UserError when the root fs does not fit the volume."""
    root_size = -(-root_size // MIB) * MIB
    if ROOT_START + root_size + GPT_BACKUP > disk_size:
        raise UserError(
            f"the root filesystem needs {(ROOT_START + root_size) / GIB:.2f} GiB; "
            f"the volume has {disk_size / GIB:g} GiB",
            hint="raise image.volume_size_gib in the manifest",
        )

    def part(number: int, start: int, size: int, type_: str, name: str) -> Partition:
        return Partition(number, start, size, type_, name, derived_uuid(seed, f"part{number}"))

    return DiskLayout(
        size=disk_size,
        disk_guid=derived_uuid(seed, "disk"),
        bios=part(14, BIOS_START, BIOS_SIZE, BIOS_BOOT_TYPE, "bios"),
        esp=part(15, ESP_START, ESP_SIZE, ESP_TYPE, "esp"),
        root=part(1, ROOT_START, root_size, LINUX_FS_TYPE, "root"),
    )


def sfdisk_script(disk: Path, layout: DiskLayout) -> str:
    lines = [
        "label: gpt",
        f"label-id: {layout.disk_guid}",
        "unit: sectors",
        "first-lba: 2048",
    ]
    for p in (layout.root, layout.bios, layout.esp):
        lines.append(
            f"{disk}{p.number} : start={p.start // SECTOR}, size={p.size // SECTOR}, "
            f'type={p.type}, uuid={p.uuid}, name="{p.name}"'
        )
    return "\n".join(lines) + "\n"


def create_disk(disk: Path, layout: DiskLayout) -> None:
    """A sparse file of the volume's size with the GPT (and protective MBR)."""
    with disk.open("wb") as f:
        f.truncate(layout.size)
    write_gpt(disk, layout)


def write_gpt(disk: Path, layout: DiskLayout, scratch: Path | None = None) -> None:
    """The GPT (and protective MBR) into the disk file, which has its size.

    With `scratch` (a path on any filesystem), sfdisk writes them into an empty
    file of the disk's size there, whose data is then copied into the disk:
    sfdisk's closing fsync then has nothing to flush (on the disk itself it
    would write out all the data a bake just put there)."""
    target = disk if scratch is None else scratch
    if scratch is not None:
        with scratch.open("wb") as f:
            f.truncate(layout.size)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", target],
        input=sfdisk_script(target, layout))
    if scratch is not None:
        src = os.open(scratch, os.O_RDONLY)
        dst = os.open(disk, os.O_WRONLY)
        try:
            copy_into(src, dst, 0)
        finally:
            os.close(src)
            os.close(dst)
            scratch.unlink()


#: mkfs.ext4's options for the root filesystem (part of the cached image's key).
MKFS_OPTIONS = ("-b", "4096", "-I", "256")
#: The time e2fsprogs writes into the filesystems it makes and changes (equal
#: inputs, equal bytes); builder.bake.fs_patch clamps the entries' times to it.
FS_TIME = 1700000000
FS_ENV = {"E2FSPROGS_FAKE_TIME": str(FS_TIME)}


def make_root_fs(
    target: Path, tree: Path, size: int, fs_uuid: str, label: str, offset: int = 0
) -> None:
    """ext4 from a directory (`mkfs.ext4 -d`): no mount, no loop device.

    With `offset`, the filesystem is written straight into the disk file at
    that byte offset (its partition), so it is never copied.
    """
    if offset == 0:
        with target.open("wb") as f:
            f.truncate(size)
    run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, *MKFS_OPTIONS,
         "-E", f"hash_seed={fs_uuid},offset={offset},nodiscard", "-d", tree,
         target, str(size // 4096)],
        env=FS_ENV,
    )


def tree_usage(tree: Path) -> tuple[int, int]:
    """(bytes allocated, entries) of a tree, as root_fs_size counts them."""
    used = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            used += st.st_blocks * 512
            inodes += 1
    return used, inodes


def root_fs_size(used: int, inodes: int) -> int:
    """Content plus headroom for the first boot (logs, apt, the journal)."""
    size = int(used * 1.25) + 384 * MIB + inodes * 256
    return -(-size // (64 * MIB)) * (64 * MIB)


def make_esp(image: Path, size: int, efi_binary: Path, volume_id: str) -> None:
    """FAT ESP holding EFI/BOOT/BOOTX64.EFI, written with mtools."""
    with image.open("wb") as f:
        f.truncate(size)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", volume_id, image], capture=True)
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], env=env, capture=True)
    run(["mcopy", "-i", image, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"], env=env, capture=True)


def _data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, end) of the data in [start, end) of a sparse file; holes left out."""
    for extent in data_extents(fd, end, start):
        yield extent.offset, extent.end


def _copy_range(src: int, dst: int, start: int, end: int, dst_offset: int) -> None:
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src, dst, end - pos, pos, dst_offset + pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # across filesystems (into a memfd): sendfile, from the file position
            os.lseek(dst, dst_offset + pos, os.SEEK_SET)
            n = os.sendfile(dst, src, pos, end - pos)
        if n == 0:
            raise UserError("a partition image ended while it was copied")
        pos += n


def place(disk: Path, part_image: Path, partition: Partition) -> None:
    """Copy a partition image into the disk at its offset, keeping holes holes."""
    length = part_image.stat().st_size
    if length > partition.size:
        raise UserError(f"{part_image.name} is larger than partition {partition.number}")
    src = os.open(part_image, os.O_RDONLY)
    dst = os.open(disk, os.O_WRONLY)
    try:
        copy_into(src, dst, partition.start)
    finally:
        os.close(src)
        os.close(dst)


def copy_into(src: int, dst: int, offset: int) -> None:
    """The open file `src` into the open file `dst` at `offset`; its holes are
    not written (they stay holes in a fresh sparse file)."""
    for start, end in _data_ranges(src, 0, os.fstat(src).st_size):
        _copy_range(src, dst, start, end, offset)


def copy_sparse(image: Path, dst: int) -> None:
    """`image` into the open file `dst` (empty), holes kept holes."""
    src = os.open(image, os.O_RDONLY)
    try:
        os.ftruncate(dst, os.fstat(src).st_size)
        copy_into(src, dst, 0)
    finally:
        os.close(src)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_holes(fd: int, ranges: Iterable[tuple[int, int]]) -> None:
    """Deallocate (offset, length) ranges of an open file: they read as zeros
    and take no space (as fstrim does for a filesystem's free blocks)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    for offset, length in ranges:
        if libc.fallocate(fd, mode, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


def used_size(path: Path) -> int:
    """Bytes of data (the holes left out): a sparse disk's true cost, as uploads
    and bundles send it. Not st_blocks: that also counts the filesystem's own
    blocks for the file (its extent tree), which ext4 allocates when it writes
    the file back, after the bake has recorded the figure."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(e.length for e in data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)
