"""Boot-test a disk image in every role before it is kept (issue #3 part 5).

Per role: boot the disk itself under qemu with UEFI (and, once per image,
with legacy BIOS), with amibake's IMDS emulator serving the role's baked
user-data, then check over SSH and HTTP what `builder.vm.checks` describes.
Roles boot one after another. A failure raises `VmError` naming the serial
log, which is kept; a passing VM's work directory is removed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.vm.accel import Accel, detect_accel
from builder.vm.checks import CheckResult, RoleChecker, RoleExpectations, expectations_for
from builder.vm.firmware import BootMode
from builder.vm.imds import imds_server
from builder.vm.metadata import (
    LocalInstanceIdentity,
    local_user_data,
    new_instance_id,
    secret_values,
)
from builder.vm.qemu import Vm, VmError, VmPaths, VmSpec
from builder.vm.ssh import Ssh, SshFailed, SshKey, generate_key
from builder.wait import NotYet, Waiter, WaitTimeout, wait_for

#: Hard limit on one VM's life. Under TCG an idle 2-core host boots a role to
#: HTTP 200 in ~60 s; a shared, loaded host has been seen 4x slower.
VM_TIMEOUT = float(os.environ.get("AMIBAKE_VM_TIMEOUT", "600"))


@dataclass(frozen=True)
class RoleBootResult:
    """One boot of one role: how long it took and what was checked."""

    role: str
    boot: BootMode
    instance_id: str
    accel: str
    seconds_to_ssh: float
    seconds_to_ready: float
    checks: tuple[CheckResult, ...]
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, object]:
        return {
            "role": self.role, "boot": self.boot, "instance_id": self.instance_id,
            "accel": self.accel, "seconds_to_ssh": round(self.seconds_to_ssh, 1),
            "seconds_to_ready": round(self.seconds_to_ready, 1), "attempts": self.attempts,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def boot_order(roles: Sequence[str], bios_once: bool) -> list[tuple[str, BootMode]]:
    """UEFI for every role; legacy BIOS once, for the first role."""
    order: list[tuple[str, BootMode]] = [(r, "uefi") for r in roles]
    if bios_once and roles:
        order.append((roles[0], "bios"))
    return order


def run_boot_tests(
    disk: Path, manifest: Manifest, roles: Sequence[str], *, workdir: Path,
    bios_once: bool = True, timeout: float = VM_TIMEOUT,
) -> list[RoleBootResult]:
    """Boot `disk` in each role and check it; raises VmError on the first failure."""
    unknown = [r for r in roles if r not in manifest.roles]
    if unknown:
        raise UserError(f"unknown role(s): {', '.join(unknown)}",
                        hint=f"roles in {manifest.source}: {', '.join(manifest.roles)}")
    workdir.mkdir(parents=True, exist_ok=True)
    key = generate_key(workdir / "id_ed25519", comment="amibake-boottest")
    accel = detect_accel()
    results = []
    try:
        for role, boot in boot_order(roles, bios_once):
            results.append(boot_and_check(disk, manifest, role, boot, key=key,
                                          workdir=workdir / f"{role}-{boot}",
                                          accel=accel, timeout=timeout))
    finally:
        for p in (key.private, key.public):
            p.unlink(missing_ok=True)
    return results


def render_identity(manifest: Manifest, role: str, key: SshKey, *,
                    baked: bool = True) -> LocalInstanceIdentity:
    return LocalInstanceIdentity(
        instance_id=new_instance_id(),
        role=role,
        instance_type=manifest.roles[role].instance_type,
        public_key=key.openssh_public(),
        user_data=local_user_data(manifest, role, baked=baked),
        secrets=secret_values(manifest),
    )


class NeverCameUp(VmError):
    """The VM never let the login user in: qemu exited, the guest kernel hung,
    or SSH did not answer in time. The one failure worth a second boot."""


#: A guest kernel stuck this long (TCG on a loaded host has been seen to hang
#: in early boot, e.g. in the crypto self-tests) will not recover.
_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck for (\d+)s")
LOCKUP_GIVE_UP_SECONDS = 60


def guest_hung(serial_text: str) -> bool:
    return any(int(s) >= LOCKUP_GIVE_UP_SECONDS for s in _LOCKUP.findall(serial_text))


def wait_ssh(vm: Vm, ssh: Ssh) -> None:
    """Until the login user gets a shell (the dispatcher installed the key).

    Gives up within 60 % of the VM's time (SSH answers long before that even
    on a loaded host), at once when qemu exits or the guest kernel hangs.
    """
    def attempt() -> None:
        try:
            vm.check_running()
        except VmError as exc:
            raise NeverCameUp(str(exc), exc.hint) from exc
        if guest_hung(vm.serial_tail(200)):
            raise vm.failure("the guest kernel hung (soft lockup)", NeverCameUp)
        ssh.run("true", timeout=20)
    try:
        wait_for(attempt, Waiter(f"SSH into {vm.spec.instance_id}", attempts=1000, interval=3,
                                 timeout=max(0.6 * vm.remaining(), 1)),
                 retry_on=(SshFailed,))
    except WaitTimeout as exc:
        raise vm.failure(str(exc), NeverCameUp) from exc


def wait_boot_finished(vm: Vm, ssh: Ssh) -> str:
    """Until systemd reports the boot finished (running or degraded)."""
    def attempt() -> str:
        vm.check_running()
        state = ssh.run("systemctl is-system-running", timeout=20).stdout.strip()
        if state in ("initializing", "starting", ""):
            raise NotYet(f"system is {state or 'unknown'}")
        return state
    return wait_for(attempt, Waiter(f"boot of {vm.spec.instance_id} to finish", attempts=200,
                                    interval=3, timeout=max(vm.remaining(), 1)),
                    retry_on=(SshFailed,))


def boot_and_check(
    disk: Path, manifest: Manifest, role: str, boot: BootMode, *, key: SshKey,
    workdir: Path, accel: Accel | None = None, timeout: float = VM_TIMEOUT,
    attempts: int = 2,
) -> RoleBootResult:
    """Boot and check one role. A VM that never came up gets one more boot
    (a new instance; the first serial log is kept as serial.attempt1.log); a
    VM that came up and failed a check does not."""
    for attempt in range(1, attempts + 1):
        identity = render_identity(manifest, role, key)
        try:
            with imds_server(identity) as imds:
                spec = VmSpec(disk=disk, imds_port=imds.port, instance_id=identity.instance_id,
                              boot=boot, instance_type=identity.instance_type, timeout=timeout)
                with Vm(spec, workdir, accel=accel) as vm:
                    ssh = Ssh(key, vm.ports.ssh, manifest.image.login_user)
                    result = check_booted_vm(vm, ssh, expectations_for(manifest, role), boot)
        except NeverCameUp:
            if attempt == attempts:
                raise
            log = VmPaths(workdir).serial_log
            if log.exists():
                log.replace(workdir / f"serial.attempt{attempt}.log")
            continue
        shutil.rmtree(workdir, ignore_errors=True)
        return dataclasses.replace(result, attempts=attempt)
    raise AssertionError("unreachable")


def check_booted_vm(vm: Vm, ssh: Ssh, expect: RoleExpectations,
                    boot: BootMode) -> RoleBootResult:
    """Wait for the VM to come up, run the role's checks; VmError on any failure."""
    wait_ssh(vm, ssh)
    to_ssh = vm.elapsed()
    try:
        # an app role booted without its database does not finish booting: its
        # dispatcher waits for the app servers, which wait for the migration
        state = "starting" if expect.migration_waits else wait_boot_finished(vm, ssh)
        to_ready = vm.elapsed()
    except WaitTimeout as exc:
        raise vm.failure(f"role {expect.role} ({boot}): {exc}") from exc

    def http_waiter(what: str) -> Waiter:
        return Waiter(what, attempts=60, interval=2, successes=2,
                      timeout=max(vm.remaining(), 1))

    checks = RoleChecker(expect, ssh, vm.ports.http, http_waiter).run_all()
    if state != "running" and not expect.migration_waits:
        failed = ssh.run("systemctl --failed --no-legend --plain").stdout.split()
        checks.append(CheckResult("boot", False, f"system is {state}: "
                                  f"{' '.join(failed[::4]) or 'no failed units'}"))
    vm.check_running()
    bad = [c for c in checks if not c.ok]
    if bad:
        detail = "; ".join(f"{c.name}: {c.detail}" for c in bad)
        raise vm.failure(f"boot test of role {expect.role} ({boot}) failed: {detail}")
    return RoleBootResult(expect.role, boot, vm.spec.instance_id, vm.accel.name, to_ssh,
                          to_ready, tuple(checks))


__all__ = ["RoleBootResult", "VmError", "boot_order", "run_boot_tests"]
