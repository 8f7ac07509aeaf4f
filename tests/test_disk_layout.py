"""The bootable disk, built from a small tree: GPT, ESP, BIOS boot, root fs, GRUB."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from builder.bake import bootloader, disk
from builder.errors import UserError

ROOT_UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "etc/hostname").write_text("localhost\n")
    (tree / "boot/grub/grub.cfg").write_text(bootloader.grub_cfg("6.1.0-test", ROOT_UUID))
    return tree


def _build(tmp_path: Path, seed: str = "seed-1") -> tuple[Path, disk.DiskLayout]:
    tree = _tree(tmp_path)
    layout = disk.plan_layout(1 * disk.GIB, 64 * disk.MIB, seed)
    path = tmp_path / "disk.raw"
    disk.create_disk(path, layout)
    disk.make_root_fs(path, tree, layout.root.size, ROOT_UUID, "amibake-root",
                      offset=layout.root.start)
    efi = bootloader.build_efi(tmp_path / "BOOTX64.EFI", ROOT_UUID)
    disk.make_esp(tmp_path / "esp.vfat", layout.esp.size, efi, "1234abcd")
    disk.place(path, tmp_path / "esp.vfat", layout.esp)
    core = bootloader.build_bios_core(tmp_path / "core.img", ROOT_UUID)
    bootloader.install_bios(path, core, layout.bios.start // 512, layout.bios.size // 512)
    return path, layout


def _sfdisk(path: Path) -> dict:
    out = subprocess.run(["sfdisk", "--json", path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["partitiontable"]


def _probe(path: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-O", str(offset), "-o", "export", path],
                         check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_gpt_has_bios_boot_esp_and_root_last(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    table = _sfdisk(path)
    assert table["label"] == "gpt"
    assert table["id"].lower() == layout.disk_guid
    parts = {int(p["node"].removeprefix(str(path))): p for p in table["partitions"]}
    assert set(parts) == {1, 14, 15}
    assert parts[14]["type"] == disk.BIOS_BOOT_TYPE
    assert parts[15]["type"] == disk.ESP_TYPE
    assert parts[1]["type"] == disk.LINUX_FS_TYPE
    # root is the last partition on the disk, so growpart can grow it at first boot
    ends = {n: p["start"] + p["size"] for n, p in parts.items()}
    assert ends[1] == max(ends.values())
    assert parts[1]["start"] * 512 == layout.root.start
    assert parts[1]["uuid"].lower() == layout.root.uuid
    assert path.stat().st_size == 1 * disk.GIB


def test_root_filesystem_has_label_and_fixed_uuid(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    fs = _probe(path, layout.root.start)
    assert fs["TYPE"] == "ext4"
    assert fs["LABEL"] == "amibake-root"
    assert fs["UUID"] == ROOT_UUID
    grub_cfg = subprocess.run(
        ["debugfs", "-R", "cat /boot/grub/grub.cfg", f"{path}?offset={layout.root.start}"],
        check=True, capture_output=True, text=True).stdout
    assert f"root=UUID={ROOT_UUID}" in grub_cfg
    assert "console=ttyS0,115200" in grub_cfg


def test_esp_holds_the_uefi_loader(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    assert _probe(path, layout.esp.start)["TYPE"] == "vfat"
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{path}@@{layout.esp.start}", "::/EFI/BOOT"],
        check=True, capture_output=True, text=True, env={"MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "BOOTX64.EFI" in listing
    efi = (tmp_path / "BOOTX64.EFI").read_bytes()
    assert efi[:2] == b"MZ"  # a PE image, as UEFI firmware expects
    assert ROOT_UUID.encode() in efi  # the embedded config finds the root fs by UUID


def test_bios_boot_code_points_at_core_img(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    raw = path.read_bytes()[: layout.esp.start]
    mbr = raw[:512]
    assert mbr[510:512] == b"\x55\xaa"
    assert mbr[0x1BE + 4] == 0xEE  # the protective MBR's GPT entry survived
    core_lba = layout.bios.start // 512
    assert struct.unpack_from("<Q", mbr, bootloader.KERNEL_SECTOR)[0] == core_lba
    boot_img = (bootloader.GRUB_LIB / "i386-pc/boot.img").read_bytes()
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8]  # grub's boot code itself
    core = (tmp_path / "core.img").read_bytes()
    first = raw[layout.bios.start: layout.bios.start + 512]
    start, count, segment = struct.unpack_from("<QHH", first, bootloader.BLOCKLIST)
    assert start == core_lba + 1
    assert count == -(-len(core) // 512) - 1
    assert segment == 0x820
    # the rest of core.img follows its first sector unchanged
    rest = raw[layout.bios.start + 512: layout.bios.start + len(core)]
    assert rest == core[512:]


def test_disk_is_sparse(tmp_path: Path) -> None:
    path, _ = _build(tmp_path)
    assert disk.used_size(path) < path.stat().st_size / 10


def test_equal_seeds_give_equal_identifiers(tmp_path: Path) -> None:
    a = disk.plan_layout(4 * disk.GIB, disk.GIB, "inputs-a")
    b = disk.plan_layout(4 * disk.GIB, disk.GIB, "inputs-a")
    c = disk.plan_layout(4 * disk.GIB, disk.GIB, "inputs-b")
    assert a == b
    assert a.disk_guid != c.disk_guid and a.root.uuid != c.root.uuid


def test_root_that_does_not_fit_the_volume_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs 2.1. GiB; the volume has 2 GiB") as err:
        disk.plan_layout(2 * disk.GIB, 2 * disk.GIB, "seed")
    assert "volume_size_gib" in err.value.hint


def test_core_img_must_fit_the_bios_boot_partition(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    with pytest.raises(UserError, match="BIOS boot partition"):
        bootloader.install_bios(path, tmp_path / "core.img", layout.bios.start // 512, 8)


def test_root_fs_written_in_place_leaves_the_rest_of_the_disk(tmp_path: Path) -> None:
    path, layout = _build(tmp_path)
    verify = subprocess.run(["sgdisk", "--verify", path], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout  # both GPT copies intact
    fs_end = layout.root.start + layout.root.size
    with path.open("rb") as f:
        f.seek(fs_end)
        assert f.read(disk.MIB) == bytes(disk.MIB)


def test_place_keeps_holes(tmp_path: Path) -> None:
    part = tmp_path / "part.img"
    with part.open("wb") as f:
        f.truncate(64 * disk.MIB)
        f.seek(32 * disk.MIB)
        f.write(b"x" * 4096)
    target = tmp_path / "disk.img"
    with target.open("wb") as f:
        f.truncate(256 * disk.MIB)
    p = disk.Partition(1, 128 * disk.MIB, 64 * disk.MIB, disk.LINUX_FS_TYPE, "t", "u")
    disk.place(target, part, p)
    with target.open("rb") as f:
        f.seek(128 * disk.MIB + 32 * disk.MIB)
        assert f.read(4096) == b"x" * 4096
    assert disk.used_size(target) < disk.MIB


def test_the_gpt_written_through_a_scratch_file_is_the_gpt(tmp_path: Path) -> None:
    """A bake has sfdisk write the GPT into an empty scratch file (its fsync then
    flushes nothing) and copies it into the disk: the same bytes as sfdisk on
    the disk itself, and the disk's data around it is kept."""
    layout = disk.plan_layout(256 * disk.MIB, 64 * disk.MIB, "seed")
    direct, through = tmp_path / "direct.raw", tmp_path / "through.raw"
    disk.create_disk(direct, layout)
    with through.open("wb") as f:
        f.truncate(layout.size)
    with through.open("r+b") as f:
        f.seek(layout.root.start)
        f.write(b"root fs")
    disk.write_gpt(through, layout, tmp_path / "gpt")
    assert not (tmp_path / "gpt").exists()
    got, want = through.read_bytes(), bytearray(direct.read_bytes())
    want[layout.root.start:layout.root.start + 7] = b"root fs"
    assert got == want
    verify = subprocess.run(["sgdisk", "--verify", through], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout
