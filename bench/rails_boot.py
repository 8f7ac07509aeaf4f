"""Benchmark: power-on to the first Rails HTTP 200 (all-in-one), and where the time goes.

    flock /tmp/amibake-heavy.lock .venv/bin/python bench/rails_boot.py   # 3 Rails, 1 Rack
    flock /tmp/amibake-heavy.lock .venv/bin/python bench/rails_boot.py --runs 1 --runs-rack 0

Bakes the all-in-one role of the Rails sample manifest (tests/test_rails_render.py's
rails_manifest: the seed with `app.code: {path: cloudinit/app-rails}`, Debian's
Rails gems, a SECRET_KEY_BASE reference; the manifest tests/test_vm_rails.py
boots) and, as the yardstick, of the seed with `app.code: sample` (the Rack
sample); the layer cache makes these bakes cheap when the tests ran before.
Then boots the disks in turn, interleaved (Rails, Rack, Rails, …), under
qemu with the IMDS emulator (builder.vm: TCG or KVM as the host allows, 1 GiB,
2 vCPUs, UEFI) and times power-on (qemu start) → the first 200 for `GET /`
through nginx → puma → PostgreSQL; for Rails only a page Rails rendered (its
CSRF meta tag) counts. Polls every 0.5 s.

Where the time goes, per boot:
- serial console: the host's clock (seconds since power-on) at the first
  appearance of each firmware/GRUB/kernel line and of each systemd
  "Started/Finished/Reached target" line (the log is read every 0.5 s);
- guest: the serial console's kernel-timestamped lines of cloud-init's stages,
  the dispatcher's setup steps, initdb and the role's units (seconds since the
  guest kernel started; add journal.kernel_started_at for power-on);
- journal: after the first 200, over SSH, each amibake/app/nginx/PostgreSQL/
  cloud-init unit's start and active-enter times (CLOCK_MONOTONIC, aligned to
  power-on with /proc/uptime read at a known host time) and systemd-analyze.

Prints medians, the Rails/Rack ratio of medians, and writes
bench/results/rails_boot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.bake.pipeline import bake, with_roles  # noqa: E402
from builder.manifest import load_manifest  # noqa: E402
from builder.manifest.model import Manifest  # noqa: E402
from builder.vm.accel import detect_accel  # noqa: E402
from builder.vm.boottest import render_identity  # noqa: E402
from builder.vm.checks import http_get  # noqa: E402
from builder.vm.imds import imds_server  # noqa: E402
from builder.vm.qemu import Vm, VmSpec  # noqa: E402
from builder.vm.ssh import Ssh, SshFailed, generate_key  # noqa: E402
from builder.wait import NotYet, Waiter, wait_for  # noqa: E402
from tests.bake_fixture import bake_options  # noqa: E402
from tests.test_rails_render import rails_manifest  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rails_boot.json"
ROLE = "all-in-one"
#: What counts as the first 200: for Rails a page Rails rendered.
MARKERS = {"rails": b'name="csrf-token"', "rack": b""}
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


def manifests(work: Path) -> dict[str, Manifest]:
    """The Rails sample manifest and the same with the Rack sample, all-in-one only."""
    (work / "rails").mkdir()
    rails = rails_manifest(work / "rails")
    text = rails.read_text()
    code = [line for line in text.splitlines() if line.startswith("  code:")]
    assert len(code) == 1, f"{rails}: expected one `  code:` line"
    rack = work / "rack" / rails.name
    rack.parent.mkdir()
    rack.write_text(text.replace(code[0], "  code: sample", 1))
    return {name: with_roles(load_manifest(path), [ROLE])
            for name, path in (("rails", rails), ("rack", rack))}


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
    analyze = ssh.run("systemd-analyze", timeout=120).stdout.strip().splitlines()
    return {"kernel_started_at": round(kernel_at, 1), "units": units_doc,
            "systemd_analyze": analyze[:2]}


def boot_to_200(disk: Path, manifest: Manifest, work: Path, marker: bytes) -> dict[str, Any]:
    """One boot: power-on → first 200 of GET /, with its serial and journal timelines."""
    key = generate_key(work / "id_ed25519", comment="amibake-bench")
    identity = render_identity(manifest, ROLE, key)
    with imds_server(identity) as imds:
        spec = VmSpec(disk=disk, imds_port=imds.port, instance_id=identity.instance_id,
                      boot="uefi", instance_type=identity.instance_type, timeout=1500)
        with Vm(spec, work / "vm", accel=detect_accel()) as vm:
            serial = SerialClock(vm)
            done = threading.Event()
            # its own thread: the HTTP probe can wait up to its timeout for a reply
            watcher = threading.Thread(target=serial.watch, args=(done,), daemon=True)
            watcher.start()

            def first_200() -> float:
                vm.check_running()
                answer = http_get(vm.ports.http, "/", host_header=manifest.app.server_name,
                                  timeout=10)
                if answer.status != 200 or marker not in answer.body:
                    raise NotYet(f"GET / answered {answer.status}")
                return vm.elapsed()

            try:
                seconds = wait_for(first_200, Waiter("first 200", attempts=100_000,
                                                     interval=0.5, timeout=1400),
                                   retry_on=(OSError,))
            finally:
                done.set()
                watcher.join()
            serial.poll()
            try:
                journal: dict[str, Any] = journal_times(
                    Ssh(key, vm.ports.ssh, manifest.image.login_user), vm)
            except (SshFailed, ValueError) as exc:
                journal = {"error": str(exc)[:300]}
            serial.poll()
            guest = guest_timeline(vm.paths.serial_log.read_text(errors="replace"))
    return {"seconds": round(seconds, 1), "milestones": serial.milestones(),
            "journal": journal, "serial": serial.lines, "guest": guest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="Rails boots")
    parser.add_argument("--runs-rack", type=int, default=1, help="Rack sample boots")
    args = parser.parse_args()
    load_before = os.getloadavg()
    accel = detect_accel()
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-rails-boot-"))
    runs: dict[str, list[dict[str, Any]]] = {"rails": [], "rack": []}
    bakes: dict[str, dict[str, Any]] = {}
    try:
        disks = {}
        for name, manifest in manifests(work).items():
            if name == "rack" and not args.runs_rack:
                continue
            started = time.monotonic()
            result = bake(manifest, bake_options(work / f"store-{name}"), say=lambda _t: None)
            bakes[name] = {"seconds": round(time.monotonic() - started, 1),
                           "app_layer_cached": result.app_cached, "image": result.image.id}
            print(f"baked {name} in {bakes[name]['seconds']} s", flush=True)
            disks[name] = (result.image.disk_path, manifest)
        plan = []
        for i in range(max(args.runs, args.runs_rack)):
            plan += [name for name, n in (("rails", args.runs), ("rack", args.runs_rack))
                     if i < n]
        for n, name in enumerate(plan):
            disk, manifest = disks[name]
            run = boot_to_200(disk, manifest, work / f"{name}{n}", MARKERS[name])
            runs[name].append(run)
            print(f"{name}: power-on → first 200 {run['seconds']} s  {run['milestones']}",
                  flush=True)
    except BaseException:
        print(f"kept {work} (serial logs)", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    medians = {k: median([r["seconds"] for r in v]) for k, v in runs.items() if v}
    names = [name for name, _ in MILESTONES]
    rails_milestones = {m: median([r["milestones"][m] for r in runs["rails"]
                                   if m in r["milestones"]])
                        for m in names if any(m in r["milestones"] for r in runs["rails"])}
    ratio = round(medians["rails"] / medians["rack"], 2) if "rack" in medians else None
    doc = {
        "benchmark": "rails_boot", "role": ROLE, "path": "/",
        "command": "flock /tmp/amibake-heavy.lock .venv/bin/python bench/rails_boot.py "
                   f"--runs {args.runs} --runs-rack {args.runs_rack}",
        "manifest": "tests/test_rails_render.py rails_manifest (app.code: {path: "
                    "cloudinit/app-rails}); rack: the same with app.code: sample",
        "accel": accel.name, "accel_reason": accel.reason, "vm": {"memory_mib": 1024, "cpus": 2},
        "host_cpus": os.cpu_count(), "bakes": bakes,
        "median_seconds": medians, "rails_over_rack": ratio,
        "rails_milestones_median_seconds": rails_milestones,
        "rails_journal_median_seconds": journal_summary(runs["rails"]),
        "rack_journal_median_seconds": journal_summary(runs["rack"]),
        "runs": runs,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print("\nRails boot, median seconds since power-on (journal):")
    for m, s in doc["rails_journal_median_seconds"].items():  # type: ignore[union-attr]
        print(f"  {s:7.1f}  {m}")
    print(f"median power-on → first 200: Rails {medians['rails']} s ({len(runs['rails'])} runs), "
          f"Rack sample {medians.get('rack', '-')} s ({len(runs['rack'])}), ratio {ratio}; "
          f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
