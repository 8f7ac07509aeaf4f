"""Where a boot's time goes: power-on (qemu start) to the first HTTP 200, with
timestamps from the serial console and, after the 200, from the guest's journal.

One home for bench/boot.py (baked vs fried) and bench/rails_boot.py (Rails vs
Rack):
- `SerialClock`: the host's clock (seconds since power-on) at the first
  appearance of each firmware/GRUB/kernel line and of each systemd
  "Started/Finished/Reached target" line (the log is read every 0.5 s in its
  own thread: the HTTP probe may wait for a reply);
- `guest_timeline`: the serial console's kernel-timestamped lines of
  cloud-init's stages, the dispatcher's setup steps, initdb and the role's
  units (seconds since the guest kernel started);
- `journal_times`: over SSH after the 200, each unit's start and active-enter
  times (CLOCK_MONOTONIC aligned to power-on with /proc/uptime read at a known
  host time), each app server's "Listening on" line, systemd-analyze and
  cloud-init's own per-module times (`cloud-init analyze blame`).
"""

from __future__ import annotations

import re
import statistics
import threading
from collections.abc import Callable
from typing import Any

from builder.vm.checks import http_get
from builder.vm.qemu import Vm
from builder.vm.ssh import Ssh, SshFailed
from builder.wait import NotYet, Waiter, wait_for

ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")
#: Serial-console lines worth a timestamp (after ANSI codes are removed).
SERIAL_LINE = re.compile(
    r"BdsDxe: starting|Welcome to GRUB|Linux version|Welcome to Debian|"
    r"\] (Started|Finished|Reached target) |cloud-init\[\d+\]: Cloud-init v\. .* finished")
#: The serial lines named in the summary (first match wins).
MILESTONES = (
    ("firmware: boot loader started", "BdsDxe: starting"),
    ("kernel started", "Linux version"),
    ("systemd in the root fs", "Welcome to Debian"),
    ("cloud-init local stage done", "Finished cloud-init-local"),
    ("network.target", "Reached target network.target"),
    ("postgresql started", "Started postgresql@"),
    ("migration done", "Finished amibake-migrate"),
    ("first app server started", "Started amibake-app@"),
    ("nginx started", "Started nginx"),
    ("dispatcher done", "Finished amibake-dispatch"),
    ("cloud-init network stage done", "Finished cloud-init.service"),
    ("multi-user.target", "Reached target multi-user.target"),
    ("cloud-init finished", " finished at "),
)
#: Kernel-timestamped serial lines (guest seconds since the kernel started) of
#: cloud-init's stages, the dispatcher's steps and the role's units.
GUEST_LINE = re.compile(
    r"^\[\s*(\d+\.\d+)\] ((?:cloud-init\[\d+\]: Cloud-init v\. |"
    r"amibake-dispatch\[\d+\]: (?:amibake-dispatch: (?:instance|running)|amibake-postgresql|"
    r"Creating new PostgreSQL|amibake: )|amibake-migrate\[\d+\]: |"
    r"systemd\[1\]: (?:Started|Finished) (?:amibake|postgresql@|nginx|ssh\.service|cloud)).*)")
#: Units whose times are read from the journal (systemctl) after the first 200.
UNITS = ("cloud-init-local.service", "cloud-init.service", "amibake-dispatch.service",
         "postgresql@15-main.service", "amibake-migrate.service", "amibake-app@*.service",
         "nginx.service", "ssh.service", "cloud-config.service", "cloud-final.service")


#: `journalctl -o short-monotonic` lines of an app server saying it listens.
LISTENING = re.compile(r"^\[\s*(\d+\.\d+)\] .*Listening on \S+:(\d+)")
#: cloud-init analyze blame: its longest stages/modules kept.
BLAME_LINES = 15


#: Where the time goes, from the journal (power-on seconds): name → (unit, field).
JOURNAL_MARKS = (
    ("kernel started", ("", "kernel_started_at")),
    ("cloud-init local stage done", ("cloud-init-local.service", "ActiveEnter")),
    ("dispatcher started (role read)", ("amibake-dispatch.service", "InactiveExit")),
    ("cloud-init network stage done", ("cloud-init.service", "ActiveEnter")),
    ("nginx active", ("nginx.service", "ActiveEnter")),
    ("postgresql active (after mkfs + initdb)", ("postgresql@15-main.service", "ActiveEnter")),
    ("migration done", ("amibake-migrate.service", "ActiveEnter")),
    ("app servers started", ("amibake-app@8000.service", "ActiveEnter")),
    ("first app server listening", ("", "first_listening")),
    ("dispatcher done", ("amibake-dispatch.service", "ActiveEnter")),
)


def journal_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over `runs` of JOURNAL_MARKS, then the first 200."""
    found: dict[str, list[float]] = {}
    for run in runs:
        journal = run.get("journal", {})
        for name, (unit, field) in JOURNAL_MARKS:
            value = journal.get(field) if not unit else \
                journal.get("units", {}).get(unit, {}).get(field)
            if value is not None:
                found.setdefault(name, []).append(value)
    doc = {name: round(statistics.median(v), 1) for name, v in found.items()}
    if runs:
        doc["first 200 of GET /"] = round(statistics.median(r["seconds"] for r in runs), 1)
    return doc


class SerialClock:
    """Host timestamps (seconds since power-on) of serial-console lines as they appear."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.path = vm.paths.serial_log
        self.offset = 0
        self.partial = ""
        self.lines: list[tuple[float, str]] = []

    def poll(self) -> None:
        now = round(self.vm.elapsed(), 1)
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", "replace")
        *done, self.partial = re.split(r"\r?\n", text)
        for raw in done:
            line = ANSI.sub("", raw).strip()
            if SERIAL_LINE.search(line):
                self.lines.append((now, line[:160]))

    def watch(self, done: threading.Event) -> None:
        while not done.wait(0.5):
            self.poll()

    def milestones(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, needle in MILESTONES:
            for seconds, line in self.lines:
                if needle in line:
                    found[name] = seconds
                    break
        return found


def guest_timeline(serial_text: str) -> list[tuple[float, str]]:
    """The serial console's kernel-timestamped setup lines: (guest seconds, line)."""
    found = []
    for raw in serial_text.splitlines():
        match = GUEST_LINE.match(ANSI.sub("", raw).strip())
        if match:
            found.append((float(match.group(1)), match.group(2)[:160]))
    return found


def journal_times(ssh: Ssh, vm: Vm) -> dict[str, Any]:
    """Units' start/active times from systemd, aligned to power-on (host seconds)."""
    before = vm.elapsed()
    uptime = float(ssh.output("cut -d' ' -f1 /proc/uptime", timeout=60))
    after = vm.elapsed()
    kernel_at = (before + after) / 2 - uptime  # power-on → the guest's CLOCK_MONOTONIC 0
    units = " ".join(f"'{u}'" for u in UNITS)
    out = ssh.output(
        f"for u in $(systemctl list-units --all --plain --no-legend {units} | cut -d' ' -f1);"
        " do systemctl show -p Id -p InactiveExitTimestampMonotonic"
        " -p ActiveEnterTimestampMonotonic -p ExecMainExitTimestampMonotonic \"$u\"; echo; done",
        timeout=120)
    units_doc: dict[str, dict[str, float]] = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = fields.pop("Id", "")
        times = {k.removesuffix("TimestampMonotonic"): round(kernel_at + int(v) / 1e6, 1)
                 for k, v in fields.items() if v.isdigit() and int(v) > 0}
        if name:
            units_doc[name] = times
    # each app server's first "Listening on" (puma has loaded the app), by port
    listening: dict[str, float] = {}
    out = ssh.run("journalctl -b -o short-monotonic --no-pager -u 'amibake-app@*'"
                  " -g 'Listening on'", timeout=120).stdout
    for line in out.splitlines():
        match = LISTENING.match(line)
        if match and match.group(2) not in listening:
            listening[match.group(2)] = round(kernel_at + float(match.group(1)), 1)
    analyze = ssh.run("systemd-analyze", timeout=120).stdout.strip().splitlines()
    # cloud-init's own account of its stages and modules (seconds each, longest first)
    blame = ssh.run("sudo cloud-init analyze blame -i /var/log/cloud-init.log",
                    timeout=300).stdout.strip().splitlines()
    return {"kernel_started_at": round(kernel_at, 1), "units": units_doc,
            "app_listening": listening,
            "first_listening": min(listening.values()) if listening else None,
            "systemd_analyze": analyze[:2],
            "cloud_init_blame": [line.strip() for line in blame
                                 if re.match(r"\s*\d+\.\d+s", line)][:BLAME_LINES]}


def first_200(vm: Vm, server_name: str, path: str, marker: bytes, timeout: float,
              on_poll: Callable[[], None] | None = None) -> tuple[float, SerialClock]:
    """Seconds from power-on to the first 200 of GET `path` (with `marker` in the
    body) through the VM's forwarded HTTP port, polled every 0.5 s, and the
    serial console's timestamps up to then."""
    serial = SerialClock(vm)
    done = threading.Event()
    watcher = threading.Thread(target=serial.watch, args=(done,), daemon=True)
    watcher.start()

    def answered() -> float:
        vm.check_running()
        if on_poll is not None:
            on_poll()
        answer = http_get(vm.ports.http, path, host_header=server_name, timeout=10)
        if answer.status != 200 or marker not in answer.body:
            raise NotYet(f"GET {path} answered {answer.status}")
        return vm.elapsed()

    try:
        seconds = wait_for(answered, Waiter(f"GET {path} → 200", attempts=1_000_000,
                                            interval=0.5, timeout=timeout),
                           retry_on=(OSError,))
    finally:
        done.set()
        watcher.join()
    serial.poll()
    return seconds, serial


def after_first_200(vm: Vm, ssh: Ssh, serial: SerialClock,
                    ) -> tuple[dict[str, Any], list[tuple[float, str]]]:
    """Once the first 200 is in: the journal's unit times over SSH (or the
    error, kept in their place) and the guest's serial timeline."""
    try:
        journal: dict[str, Any] = journal_times(ssh, vm)
    except (SshFailed, ValueError) as exc:
        journal = {"error": str(exc)[:300]}
    serial.poll()
    return journal, guest_timeline(vm.paths.serial_log.read_text(errors="replace"))
