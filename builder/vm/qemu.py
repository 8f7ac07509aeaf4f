"""One throw-away VM: a disk booted by itself under qemu, looking like EC2.

- the base disk is never written: a qcow2 overlay backed by it takes writes;
- a second blank sparse disk is the instance storage (ephemeral0);
- SMBIOS type 1 says "Amazon EC2" with serial == uuid starting with `ec2`,
  so cloud-init's ds-identify picks the Ec2 datasource;
- user networking on 169.254.0.0/16; the guest's connections to
  169.254.169.254:80 each start the relay (builder/vm/relay.py), which
  relays to amibake's IMDS emulator on loopback (the `tcp:` target form of
  guestfwd serves only one connection);
- SSH and HTTP forwarded from free loopback ports; serial console to a file.

The VM is always killed: on leaving the context, at interpreter exit
(atexit), and when this process dies (PR_SET_PDEATHSIG). The overlay, the
instance storage and the UEFI variable store are removed; the serial log is
kept (its path goes into every error about the VM).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from builder.errors import UserError
from builder.ports import free_port
from builder.proc import run
from builder.vm.accel import Accel, detect_accel
from builder.vm.firmware import BootMode, Firmware, prepare_firmware
from builder.wait import NotYet, Waiter, wait_for

log = logging.getLogger("amibake.vm")

METADATA_ADDRESS = "169.254.169.254"
GUEST_NETWORK = "169.254.0.0/16"
# qemu's user network: its gateway/host, DNS forwarder and the address its
# DHCP server gives the guest (the only guest), inside GUEST_NETWORK.
GUEST_GATEWAY = "169.254.2.2"
GUEST_DNS = "169.254.2.3"
GUEST_ADDRESS = "169.254.2.15"


@dataclass(frozen=True)
class VmSpec:
    """What to boot and how it looks from inside."""

    disk: Path
    imds_port: int
    instance_id: str
    boot: BootMode = "uefi"
    instance_type: str = "t3.small"
    memory_mib: int = 1024
    cpus: int = 2
    instance_store_gib: int = 1
    timeout: float = 300.0  # hard limit on the VM's life inside the context
    #: more guest → host forwards, like the metadata service's: (guest address,
    #: guest port, loopback port on the host), one relay process per connection
    forwards: tuple[tuple[str, int, int], ...] = ()
    #: keep the root overlay between boots (a stopped and started instance:
    #: same root disk, a new blank instance store); the caller removes it
    keep_root: bool = False
    #: a second NIC on a private network shared with other VMs (a local stack):
    #: qemu's multicast socket netdev, "GROUP:PORT" on loopback; None: no second NIC
    private_network: str | None = None

    @property
    def smbios_uuid(self) -> str:
        """A UUID starting with `ec2`, stable for the instance id."""
        h = hashlib.sha256(self.instance_id.encode()).hexdigest()
        return f"ec2{h[:5]}-{h[5:9]}-{h[9:13]}-{h[13:17]}-{h[17:29]}"

    @property
    def mac(self) -> str:
        return mac_for(self.instance_id)

    @property
    def private_mac(self) -> str:
        return private_mac_for(self.instance_id)


def private_mac_for(instance_id: str) -> str:
    """The MAC of the instance's NIC on a local stack's private network."""
    return mac_for("private-" + instance_id)


def mac_for(instance_id: str) -> str:
    """A locally administered unicast MAC, stable for the instance id.

    The IMDS emulator must serve the same MAC: cloud-init's Ec2 network
    configuration matches the NIC by network/interfaces/macs/<mac>/.
    """
    h = hashlib.sha256(b"mac" + instance_id.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


@dataclass(frozen=True)
class VmPaths:
    """Files a VM lives in, all under its work directory."""

    workdir: Path

    @property
    def overlay(self) -> Path:
        return self.workdir / "overlay.qcow2"

    @property
    def instance_store(self) -> Path:
        return self.workdir / "ephemeral0.raw"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"


@dataclass(frozen=True)
class Ports:
    """Loopback ports forwarded into the guest."""

    ssh: int
    http: int


def _opt(value: str) -> str:
    """Escape a value for qemu's comma-separated option syntax."""
    return value.replace(",", ",,")


RELAY_SCRIPT = Path(__file__).resolve().with_name("relay.py")


def relay_command(imds_port: int, python: str = sys.executable,
                  script: Path = RELAY_SCRIPT) -> str:
    """The per-connection relay qemu starts (through /bin/sh) for guestfwd.

    builder/vm/relay.py run as a script with `-S -I` (stdlib only: no site,
    no environment): it starts in about half the time of `-m builder.vm.relay`,
    and cloud-init's metadata crawl opens ~40 connections in a row.
    """
    return f"{shlex.quote(python)} -S -I {shlex.quote(str(script))} {imds_port}"


def build_command(
    spec: VmSpec, paths: VmPaths, ports: Ports, firmware: Firmware, accel: Accel,
    *, python: str = sys.executable,
) -> list[str]:
    """The qemu command line (pure: no files are touched)."""
    uuid = spec.smbios_uuid
    netdev = ",".join([
        "user", "id=net0", f"net={GUEST_NETWORK}", f"host={GUEST_GATEWAY}",
        f"dns={GUEST_DNS}", f"dhcpstart={GUEST_ADDRESS}",
        f"hostfwd=tcp:127.0.0.1:{ports.ssh}-:22",
        f"hostfwd=tcp:127.0.0.1:{ports.http}-:80",
        f"guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:{_opt(relay_command(spec.imds_port, python))}",
        *(f"guestfwd=tcp:{addr}:{port}-cmd:{_opt(relay_command(host_port, python))}"
          for addr, port, host_port in spec.forwards),
    ])
    return [
        "qemu-system-x86_64",
        "-name", _opt(f"amibake-{spec.instance_id}"),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", "q35",
        *accel.args,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.cpus),
        *firmware.qemu_args(),
        "-smbios",
        f"type=1,manufacturer=Amazon EC2,product={_opt(spec.instance_type)},"
        f"serial={uuid},uuid={uuid}",
        "-drive", f"file={_opt(str(paths.overlay))},format=qcow2,if=none,id=root,"
        "cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=root,bootindex=0",
        "-drive", f"file={_opt(str(paths.instance_store))},format=raw,if=none,id=eph0,"
        "cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=eph0,serial=ephemeral0",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}",
        *(["-netdev", f"socket,id=net1,mcast={_opt(spec.private_network)},"
                      "localaddr=127.0.0.1",
           "-device", f"virtio-net-pci,netdev=net1,mac={spec.private_mac}"]
          if spec.private_network else []),
        "-device", "virtio-rng-pci",
        "-serial", f"file:{paths.serial_log}",
        "-pidfile", str(paths.pidfile),
    ]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on: its sockets' inodes in /proc/net/tcp{,6}."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


class VmError(UserError):
    """A VM failed: exited, timed out, or a check failed. Names the serial log."""


_live: set[Vm] = set()


def _kill_all_at_exit() -> None:
    for vm in list(_live):
        vm.kill()


atexit.register(_kill_all_at_exit)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Vm:
    """A running VM; use as a context manager."""

    def __init__(
        self, spec: VmSpec, workdir: Path, *, accel: Accel | None = None,
        ports: Ports | None = None, die_with_parent: bool = True,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.paths = VmPaths(workdir)
        self.accel = accel or detect_accel()
        self.ports = ports or Ports(ssh=free_port(), http=free_port())
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._clock = clock
        self._sleep = sleep
        self._firmware: Firmware | None = None

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> Vm:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        self.paths.workdir.mkdir(parents=True, exist_ok=True)
        if not self.spec.disk.is_file():
            raise UserError(f"disk image not found: {self.spec.disk}")
        if not (self.spec.keep_root and self.paths.overlay.exists()):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                 str(self.spec.disk.resolve()), "-F", "raw", str(self.paths.overlay)])
        with open(self.paths.instance_store, "wb") as f:
            f.truncate(self.spec.instance_store_gib << 30)
        self._firmware = prepare_firmware(self.spec.boot, self.paths.workdir)
        for attempt in range(3):
            self._spawn()
            try:
                self.check_running()
                return
            except VmError:
                # another process took a "free" port between the probe and qemu's bind
                if attempt == 2 or "host forwarding" not in self._qemu_output():
                    raise
                self.ports = Ports(ssh=free_port(), http=free_port())

    def _spawn(self) -> None:
        assert self._firmware is not None
        cmd = build_command(self.spec, self.paths, self.ports, self._firmware, self.accel)
        log.debug("+ %s", shlex.join(cmd))
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.paths.qemu_log, "wb") as qlog:
            self.proc = subprocess.Popen(  # a background process: proc.run is for waiting
                cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.started_at = self._clock()
        _live.add(self)
        self._wait_until_forwarding()

    def _wait_until_forwarding(self) -> None:
        """Until qemu listens on both forwarded ports (its network is set up), or has
        exited (then `check_running` says why: a taken port, a bad option…)."""
        proc = self.proc
        assert proc is not None
        wanted = {self.ports.ssh, self.ports.http}

        def check() -> None:
            if proc.poll() is not None:
                return
            missing = wanted - listening_ports(proc.pid)
            if missing:
                raise NotYet(f"qemu does not listen on port(s) {sorted(missing)} yet")

        wait_for(check, Waiter("qemu to set up its network", attempts=1200, interval=0.05,
                               timeout=60, hint=f"see {self.paths.qemu_log}"),
                 sleep=self._sleep, clock=self._clock)

    def _qemu_output(self) -> str:
        try:
            return self.paths.qemu_log.read_text(errors="replace").strip()
        except OSError:
            return ""

    def kill(self) -> None:
        """Kill qemu (idempotent) and reap it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - D state
            log.warning("qemu pid %d did not exit after SIGKILL", proc.pid)
        _live.discard(self)

    def close(self) -> None:
        """Kill the VM and remove everything but the logs."""
        self.kill()
        kept = (self.paths.overlay,) if self.spec.keep_root else ()
        for path in (self.paths.overlay, self.paths.instance_store, self.paths.pidfile):
            if path not in kept:
                path.unlink(missing_ok=True)
        if self._firmware is not None and self._firmware.vars is not None:
            self._firmware.vars.unlink(missing_ok=True)

    # ---------------------------------------------------------------- state
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def elapsed(self) -> float:
        return self._clock() - self.started_at

    def remaining(self) -> float:
        return self.spec.timeout - self.elapsed()

    def serial_tail(self, lines: int = 15) -> str:
        try:
            text = self.paths.serial_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise VmError when qemu has exited or the VM's time is up."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            qemu_out = self._qemu_output()
            detail = qemu_out.splitlines()[-1] if qemu_out else "no output"
            raise VmError(
                f"qemu exited with code {code} after {self.elapsed():.0f} s ({detail}); "
                f"serial log: {self.paths.serial_log}",
                hint="read the serial log for the guest's last words",
            )
        if self.remaining() <= 0:
            raise self.failure(f"VM timed out after {self.spec.timeout:.0f} s")

    def failure(self, message: str, kind: type[VmError] | None = None) -> VmError:
        """A VmError (or `kind`) naming the serial log, to raise after a failed check."""
        return (kind or VmError)(
            f"{message}; serial log: {self.paths.serial_log}",
            hint="read the serial log for what the guest did",
        )
