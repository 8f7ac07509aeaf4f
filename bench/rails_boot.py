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

Where the time goes, per boot: serial console, guest and journal timelines
(bench/boot_timeline.py, shared with bench/boot.py).

Prints medians, the Rails/Rack ratio of medians, and writes
bench/results/rails_boot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.boot_timeline import (  # noqa: E402
    MILESTONES,
    after_first_200,
    first_200,
    journal_summary,
)
from builder.bake.pipeline import bake, with_roles  # noqa: E402
from builder.manifest import load_manifest  # noqa: E402
from builder.manifest.model import Manifest  # noqa: E402
from builder.vm.accel import detect_accel  # noqa: E402
from builder.vm.boottest import render_identity  # noqa: E402
from builder.vm.imds import imds_server  # noqa: E402
from builder.vm.qemu import Vm, VmSpec  # noqa: E402
from builder.vm.ssh import Ssh, generate_key  # noqa: E402
from tests.bake_fixture import bake_options  # noqa: E402
from tests.test_rails_render import rails_manifest  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rails_boot.json"
ROLE = "all-in-one"
#: What counts as the first 200: for Rails a page Rails rendered.
MARKERS = {"rails": b'name="csrf-token"', "rack": b""}
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


def boot_to_200(disk: Path, manifest: Manifest, work: Path, marker: bytes) -> dict[str, Any]:
    """One boot: power-on → first 200 of GET /, with its serial and journal timelines."""
    key = generate_key(work / "id_ed25519", comment="amibake-bench")
    identity = render_identity(manifest, ROLE, key)
    with imds_server(identity) as imds:
        spec = VmSpec(disk=disk, imds_port=imds.port, instance_id=identity.instance_id,
                      boot="uefi", instance_type=identity.instance_type, timeout=1500)
        with Vm(spec, work / "vm", accel=detect_accel()) as vm:
            seconds, serial = first_200(vm, manifest.app.server_name, "/", marker, 1400)
            journal, guest = after_first_200(
                vm, Ssh(key, vm.ports.ssh, manifest.image.login_user), serial)
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
