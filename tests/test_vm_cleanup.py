"""A VM is always killed: failed check, exception, interpreter exit, killed parent.

These boot real qemu on a blank disk (the firmware finds nothing to boot),
so no baked image is needed. Processes are found by scanning /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.ports import free_port
from builder.vm.accel import TCG_ARGS, Accel
from builder.vm.boottest import check_booted_vm
from builder.vm.checks import RoleExpectations
from builder.vm.metadata import new_instance_id
from builder.vm.qemu import Vm, VmError, VmSpec
from builder.vm.ssh import Ssh, generate_key

pytestmark = pytest.mark.vm  # boots qemu (briefly: a blank disk)

TCG = Accel("tcg", TCG_ARGS, "test")


def qemu_pids(instance_id: str) -> list[int]:
    """Pids of live qemu processes started for `instance_id` (a /proc scan)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        args = raw.split(b"\0")
        if args and args[0].endswith(b"qemu-system-x86_64") and state != "Z" \
                and f"amibake-{instance_id}".encode() in args:
            pids.append(int(entry))
    return pids


def blank_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    return disk


def plan() -> RoleExpectations:
    return RoleExpectations(role="web", nginx=True, full_chain=False, postgresql=False,
                    server_name="x.example.com", maintenance_flag="/var/www/maintenance/on",
                    retry_after=300, static_page="/404.html", mount_point="/mnt")


def test_a_vm_whose_boot_check_fails_is_killed_and_its_files_removed(tmp_path: Path) -> None:
    iid = new_instance_id()
    spec = VmSpec(blank_disk(tmp_path), imds_port=free_port(), instance_id=iid, timeout=8)
    key = generate_key(tmp_path / "id_ed25519")
    vmdir = tmp_path / "vm"
    with pytest.raises(VmError) as err, Vm(spec, vmdir, accel=TCG) as vm:
        assert qemu_pids(iid) == [vm.pid]
        assert (vmdir / "overlay.qcow2").exists() and (vmdir / "ephemeral0.raw").exists()
        check_booted_vm(vm, Ssh(key, vm.ports.ssh), plan(), "uefi")
    assert f"serial log: {vmdir / 'serial.log'}" in str(err.value)
    assert "SSH into" in str(err.value)
    assert qemu_pids(iid) == []
    assert (vmdir / "serial.log").exists()  # kept for the post-mortem
    assert not (vmdir / "overlay.qcow2").exists()
    assert not (vmdir / "ephemeral0.raw").exists()
    assert not (vmdir / "OVMF_VARS.fd").exists()
    assert blank_disk(tmp_path).stat().st_blocks == 0  # the base disk was never written


def test_an_exception_inside_the_context_kills_the_vm(tmp_path: Path) -> None:
    iid = new_instance_id()
    spec = VmSpec(blank_disk(tmp_path), imds_port=free_port(), instance_id=iid, boot="bios")
    with pytest.raises(RuntimeError), Vm(spec, tmp_path / "vm", accel=TCG):
        assert len(qemu_pids(iid)) == 1
        raise RuntimeError("a check crashed")
    assert qemu_pids(iid) == []


def _start_vm_in_child(tmp_path: Path, iid: str, tail: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from builder.vm.accel import TCG_ARGS, Accel
        from builder.ports import free_port
        from builder.vm.qemu import Vm, VmSpec
        spec = VmSpec(Path({str(blank_disk(tmp_path))!r}), free_port(), {iid!r})
        vm = Vm(spec, Path({str(tmp_path / 'vm')!r}), accel=Accel("tcg", TCG_ARGS, "t"))
        vm.start()
        print("started", flush=True)
    """) + tail
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_interpreter_exit_kills_a_vm_left_running(tmp_path: Path) -> None:
    iid = new_instance_id()
    child = _start_vm_in_child(tmp_path, iid, "")  # never closes the VM: atexit must
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    assert child.wait(timeout=60) == 0
    assert qemu_pids(iid) == []


def test_a_killed_parent_takes_its_vm_along(tmp_path: Path) -> None:
    iid = new_instance_id()
    child = _start_vm_in_child(tmp_path, iid, "time.sleep(600)\n")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    assert len(qemu_pids(iid)) == 1
    os.kill(child.pid, signal.SIGKILL)  # no atexit, no finally
    child.wait(timeout=30)
    for _ in range(100):
        if not qemu_pids(iid):
            break
        time.sleep(0.1)
    assert qemu_pids(iid) == []


def test_a_taken_port_is_replaced_and_a_bad_disk_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from builder.vm.qemu import Ports
    iid = new_instance_id()
    spec = VmSpec(blank_disk(tmp_path), imds_port=free_port(), instance_id=iid, boot="bios")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with Vm(spec, tmp_path / "vm", accel=TCG, ports=Ports(ssh=busy, http=free_port())) as vm:
            assert vm.ports.ssh != busy and qemu_pids(iid) == [vm.pid]
    assert qemu_pids(iid) == []
    with pytest.raises(UserError, match="disk image not found"):
        Vm(VmSpec(tmp_path / "none.raw", 1, new_instance_id()), tmp_path / "vm2").__enter__()


def test_a_vm_that_never_comes_up_gets_one_more_boot_then_fails(tmp_path: Path) -> None:
    from builder.manifest import load_manifest
    from builder.vm.boottest import NeverCameUp, boot_and_check

    manifest = load_manifest(Path(__file__).resolve().parent.parent / "manifests/smallpayroll.yaml")
    workdir = tmp_path / "web-bios"
    with pytest.raises(NeverCameUp) as err:
        boot_and_check(blank_disk(tmp_path), manifest, "web", "bios",
                       key=generate_key(tmp_path / "k"), workdir=workdir, accel=TCG, timeout=6)
    assert f"serial log: {workdir / 'serial.log'}" in str(err.value)
    assert sorted(p.name for p in workdir.glob("serial*.log")) == [
        "serial.attempt1.log", "serial.log"]
    assert not list(workdir.glob("*.qcow2")) and not list(workdir.glob("*.raw"))
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit()
                 and str(workdir).encode() in _cmdline(int(pid))]
    assert leftovers == []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
