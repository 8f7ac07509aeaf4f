"""GRUB for UEFI and legacy BIOS, built on the host and written into a disk file.

Both GRUB images carry every module they need and a small embedded config
that finds the root filesystem by UUID and reads its /boot/grub/grub.cfg, so
the image needs no grub package and no `grub-install` against a device.

BIOS: boot.img goes into the MBR's boot code (the protective MBR's partition
entries are kept) with the LBA of core.img patched in, and core.img goes
into the BIOS boot partition with its first sector's blocklist pointing at
the rest — exactly what grub-bios-setup does (grub's boot.S / diskboot.S).
"""

from __future__ import annotations

import struct
from pathlib import Path

from builder.errors import UserError
from builder.proc import run

GRUB_LIB = Path("/usr/lib/grub")
SECTOR = 512

EFI_MODULES = (
    "part_gpt", "part_msdos", "ext2", "fat", "normal", "linux", "search",
    "search_fs_uuid", "search_label", "serial", "terminal", "echo", "all_video",
    "gzio", "configfile", "test", "boot", "efi_gop", "sleep",
)
BIOS_MODULES = (
    "biosdisk", "part_gpt", "part_msdos", "ext2", "normal", "linux", "search",
    "search_fs_uuid", "search_label", "serial", "terminal", "echo", "all_video",
    "gzio", "configfile", "test", "boot", "sleep",
)

# Offsets in boot.img (grub include/grub/i386/pc/boot.h).
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR = 0x5C
DRIVE_CHECK = 0x66
PART_TABLE_START, PART_END = 0x1B8, 0x1FE
# The first blocklist entry at the end of diskboot.img (core.img's first sector):
# u64 start sector, u16 sector count, u16 load segment.
BLOCKLIST = SECTOR - 12
KERNEL_SEG = 0x800


def early_config(root_uuid: str) -> str:
    """Embedded in both GRUB images: find the root fs, then read its grub.cfg."""
    return (
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n"
    )


KERNEL_CMDLINE = "ro console=tty0 console=ttyS0,115200 nvme_core.io_timeout=4294967295"


def grub_cfg(kernel: str, root_uuid: str) -> str:
    """The image's /boot/grub/grub.cfg: serial console, kernel and initramfs."""
    return f"""\
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
menuentry "Debian GNU/Linux (amibake), {kernel}" {{
    search --no-floppy --fs-uuid --set=root {root_uuid}
    linux /boot/vmlinuz-{kernel} root=UUID={root_uuid} {KERNEL_CMDLINE}
    initrd /boot/initrd.img-{kernel}
}}
"""


def _mkimage(fmt: str, modules: tuple[str, ...], out: Path, root_uuid: str) -> None:
    config = out.with_suffix(".cfg")
    config.write_text(early_config(root_uuid))
    run(
        ["grub-mkimage", "-O", fmt, "-d", GRUB_LIB / fmt, "-o", out, "-c", config,
         "-p", "/boot/grub", *modules],
        capture=True,
    )
    config.unlink()


def build_efi(out: Path, root_uuid: str) -> Path:
    """EFI/BOOT/BOOTX64.EFI for the ESP."""
    _mkimage("x86_64-efi", EFI_MODULES, out, root_uuid)
    return out


def build_bios_core(out: Path, root_uuid: str) -> Path:
    """core.img for the BIOS boot partition."""
    _mkimage("i386-pc", BIOS_MODULES, out, root_uuid)
    return out


def install_bios(disk: Path, core_img: Path, core_lba: int, room_sectors: int) -> None:
    """Write core.img at `core_lba` and boot.img into the MBR of `disk`."""
    core = bytearray(core_img.read_bytes())
    core += bytes(-len(core) % SECTOR)
    sectors = len(core) // SECTOR
    if sectors > room_sectors:
        raise UserError(
            f"GRUB core.img needs {sectors} sectors; the BIOS boot partition has {room_sectors}"
        )
    start, count, segment = struct.unpack_from("<QHH", core, BLOCKLIST)
    if start != 2 or segment != KERNEL_SEG + (SECTOR >> 4):
        raise UserError(f"unexpected GRUB core.img layout in {core_img} (grub version?)")
    struct.pack_into("<QHH", core, BLOCKLIST, core_lba + 1, sectors - 1, segment)

    boot = bytearray((GRUB_LIB / "i386-pc" / "boot.img").read_bytes())
    if len(boot) != SECTOR:
        raise UserError("unexpected size of GRUB's boot.img")
    with disk.open("r+b") as f:
        mbr = f.read(SECTOR)
        if mbr[PART_END:SECTOR] != b"\x55\xaa":
            raise UserError(f"{disk} has no (protective) MBR: write the partition table first")
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        boot[PART_TABLE_START:PART_END] = mbr[PART_TABLE_START:PART_END]
        struct.pack_into("<Q", boot, KERNEL_SECTOR, core_lba)
        boot[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"  # trust the BIOS's drive number
        f.seek(core_lba * SECTOR)
        f.write(core)
        f.seek(0)
        f.write(boot)
