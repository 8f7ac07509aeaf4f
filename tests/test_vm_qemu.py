"""The qemu command line: overlay, SMBIOS, networking with the relay, firmware."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.vm.accel import TCG_ARGS, Accel
from builder.vm.firmware import OVMF_CODE, prepare_firmware
from builder.vm.qemu import (
    RELAY_SCRIPT,
    Ports,
    VmPaths,
    VmSpec,
    build_command,
    listening_ports,
    relay_command,
)

TCG = Accel("tcg", TCG_ARGS, "test")


def _opt_after(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def _command(tmp_path: Path, boot: str = "uefi", python: str = "/venv/bin/python") -> list[str]:
    spec = VmSpec(disk=tmp_path / "disk.raw", imds_port=41234, instance_id="i-0123456789abcdef0",
                  boot=boot, instance_type="t3.small")  # type: ignore[arg-type]
    fw = prepare_firmware(spec.boot, tmp_path)
    return build_command(spec, VmPaths(tmp_path), Ports(ssh=42022, http=42080), fw, TCG,
                         python=python)


def test_smbios_says_amazon_ec2_with_serial_equal_to_uuid(tmp_path: Path) -> None:
    (smbios,) = _opt_after(_command(tmp_path), "-smbios")
    fields = dict(kv.split("=", 1) for kv in smbios.split(","))
    assert fields["type"] == "1"
    assert fields["manufacturer"] == "Amazon EC2"
    assert fields["product"] == "t3.small"
    assert fields["serial"] == fields["uuid"]
    assert fields["uuid"].startswith("ec2")
    import uuid
    assert str(uuid.UUID(fields["uuid"])) == fields["uuid"]


def test_uuid_and_mac_are_stable_per_instance_and_differ_between() -> None:
    a = VmSpec(Path("d"), 1, "i-aaaaaaaaaaaaaaaaa")
    b = VmSpec(Path("d"), 1, "i-bbbbbbbbbbbbbbbbb")
    assert a.smbios_uuid == VmSpec(Path("x"), 2, "i-aaaaaaaaaaaaaaaaa").smbios_uuid
    assert a.smbios_uuid != b.smbios_uuid and a.mac != b.mac
    first = int(a.mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast


def test_network_forwards_metadata_through_a_per_connection_relay(tmp_path: Path) -> None:
    (netdev,) = _opt_after(_command(tmp_path), "-netdev")
    parts = netdev.split(",")
    assert "user" in parts and "net=169.254.0.0/16" in parts
    assert {"host=169.254.2.2", "dns=169.254.2.3", "dhcpstart=169.254.2.15"} <= set(parts)
    assert "hostfwd=tcp:127.0.0.1:42022-:22" in parts
    assert "hostfwd=tcp:127.0.0.1:42080-:80" in parts
    (guestfwd,) = [p for p in parts if p.startswith("guestfwd=")]
    # the cmd: form (one relay per connection), not the tcp: target form
    assert guestfwd == ("guestfwd=tcp:169.254.169.254:80-cmd:"
                        f"/venv/bin/python -S -I {RELAY_SCRIPT} 41234")
    assert RELAY_SCRIPT.is_file()


def test_commas_in_the_python_path_are_escaped(tmp_path: Path) -> None:
    (netdev,) = _opt_after(_command(tmp_path, python="/opt/a,b/python"), "-netdev")
    assert f"cmd:/opt/a,,b/python -S -I {RELAY_SCRIPT} 41234" in netdev
    assert shlex.split(relay_command(7, "/x y/python"))[0] == "/x y/python"


def test_root_is_an_overlay_and_the_second_disk_is_instance_storage(tmp_path: Path) -> None:
    cmd = _command(tmp_path)
    drives = _opt_after(cmd, "-drive")
    root = next(d for d in drives if "id=root" in d)
    assert f"file={tmp_path}/overlay.qcow2" in root and "format=qcow2" in root
    eph = next(d for d in drives if "id=eph0" in d)
    assert f"file={tmp_path}/ephemeral0.raw" in eph and "format=raw" in eph
    devices = _opt_after(cmd, "-device")
    assert "virtio-blk-pci,drive=root,bootindex=0" in devices
    assert any(d.startswith("virtio-net-pci,netdev=net0,mac=02:") for d in devices)
    assert "-kernel" not in cmd  # the disk boots by itself
    assert _opt_after(cmd, "-serial") == [f"file:{tmp_path}/serial.log"]
    assert _opt_after(cmd, "-display") == ["none"]
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi"
    assert _opt_after(cmd, "-m") == ["1024"] and _opt_after(cmd, "-smp") == ["2"]


def test_uefi_uses_ovmf_code_read_only_and_a_private_vars_copy(tmp_path: Path) -> None:
    drives = _opt_after(_command(tmp_path), "-drive")
    pflash = [d for d in drives if d.startswith("if=pflash")]
    assert len(pflash) == 2
    assert "readonly=on" in pflash[0] and pflash[0].endswith(OVMF_CODE)
    assert pflash[1].endswith(f"file={tmp_path}/OVMF_VARS.fd")
    copy = tmp_path / "OVMF_VARS.fd"
    assert copy.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()


def test_bios_boots_with_seabios_default(tmp_path: Path) -> None:
    cmd = _command(tmp_path, boot="bios")
    assert not [d for d in _opt_after(cmd, "-drive") if d.startswith("if=pflash")]
    assert not (tmp_path / "OVMF_VARS.fd").exists()


def test_missing_ovmf_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="UEFI firmware not found"):
        prepare_firmware("uefi", tmp_path, ovmf_dir=tmp_path / "nowhere")


def test_listening_ports_are_the_processs_own_listening_sockets() -> None:
    import os
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert port not in listening_ports(os.getpid())  # bound, not listening yet
    listener.listen()
    try:
        assert port in listening_ports(os.getpid())
        assert port not in listening_ports(1)  # another process's sockets are not ours
    finally:
        listener.close()
    assert port not in listening_ports(os.getpid())
    assert listening_ports(2**22 + 1) == set()  # no such process
