"""Benchmark: amibake's bake against Debian's mkosi, interleaved in one run.

    .venv/bin/python bench/bake.py                 # 2 cold runs each, then 3 warm runs each
    .venv/bin/python bench/bake.py --cold-runs 1 --runs 2

Both build the seed manifest's package set (the base layer's, the same
list for both) for the same Debian release from the host's apt sources
(mkosi gets the first mirror URI of the host's configuration on its
command line; nothing is written into a file). Runs alternate between the
two tools, so both see the same load on this shared machine:

- amibake cold:    `amibake bake MANIFEST --skip-boot-test --json` with a fresh,
                   empty layer cache: mmdebstrap of the base layer, caching it,
                   the config layer, the whole disk (root ext4: mkfs -d of the
                   base layer, cached, patched with the layers' changes; ESP,
                   GPT, GRUB for UEFI and BIOS), sha256. Its phases (download,
                   essential set, other packages, initramfs, cache, root_image,
                   rootfs, disk …) come from the bake's own step timings.
- mkosi cold:      `mkosi build` with an empty package cache and `--incremental`
                   (it fills its cache as it builds, as amibake fills its own).
                   First tried as a bootable disk (`gpt_ext4 --bootable`); when
                   mkosi cannot write a disk on this machine, the error is kept
                   and `Format=directory` is measured instead (against
                   amibake's rootfs stage, its disk step timed on its own).
                   `--with-docs`: mkosi 14 strips docs with systemd-nspawn,
                   which fails in this sandbox.
- amibake config-only: one role's config changed (nginx's Retry-After), the
                   version bumped: base and its root fs from the cache, new
                   config layer, the root fs patched, disk.
- mkosi incremental: the same mkosi build again with its cache, one file
                   changed in an `--extra-tree` (its config-only rebuild).
                   mkosi 14 without a build script never writes the
                   "cache-pre-dev" image its need_cache_images() looks for, so
                   each `--incremental` build makes its cache again: what
                   Debian's mkosi does when asked, measured as it is.
- amibake no-op:   the same manifest again: nothing is built.

Targets (issue 16): amibake cold <= 0.75 x mkosi cold (ratio of medians),
config-only <= 3 s, no-op <= 0.3 s. Prints a table and writes
bench/results/bake.json with every run, the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEED = ROOT / "manifests" / "smallpayroll.yaml"
RESULTS = ROOT / "bench" / "results" / "bake.json"
TARGETS = {"cold_ratio": 0.75, "config-only": 3.0, "no-op": 0.3}


def bake(manifest: Path, store: Path, cache: Path) -> tuple[float, dict[str, Any]]:
    # --allow-dirty: the seed's app is the Rails sample inside this checkout,
    # which may carry uncommitted work while a bench runs
    cmd = [sys.executable, "-m", "builder", "bake", str(manifest), "--skip-boot-test",
           "--allow-dirty", "--store", str(store), "--cache-dir", str(cache), "--json"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bake failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return wall, json.loads(proc.stdout)


class Mkosi:
    """mkosi 14 builds of one package set; `fmt` falls back to directory."""

    def __init__(self, packages: list[str], release: str, mirror: str) -> None:
        self.packages = packages
        self.release = release
        self.mirror = mirror
        self.fmt = "gpt_ext4"
        self.disk_error = ""

    def build(self, out: Path, *, extra: Path | None = None) -> float:
        out.mkdir(parents=True, exist_ok=True)
        while True:
            cmd = ["mkosi", "--distribution", "debian", "--release", self.release,
                   "--mirror", self.mirror, "--format", self.fmt, "--with-docs",
                   "--output", str(out / "image"), "--cache", str(out / "debs"),
                   "--workspace-dir", str(out), "--incremental", "--force",
                   "--package", ",".join(self.packages)]
            if self.fmt != "directory":
                cmd += ["--bootable"]
            if extra is not None:
                cmd += ["--extra-tree", str(extra)]
            start = time.monotonic()
            # an empty directory as cwd: mkosi reads mkosi.default & co. from there
            proc = subprocess.run([*cmd, "build"], cwd=out, capture_output=True, text=True)
            wall = time.monotonic() - start
            if proc.returncode == 0:
                return wall
            tail = (proc.stderr or proc.stdout)[-1500:]
            if self.fmt != "directory":
                self.disk_error = f"mkosi --format {self.fmt} --bootable failed " \
                                  f"after {wall:.1f} s: {tail}"
                print(f"mkosi cannot write a disk image here; Format=directory instead\n"
                      f"  {tail.strip().splitlines()[-1] if tail.strip() else ''}", flush=True)
                self.fmt = "directory"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                continue
            sys.exit(f"mkosi failed ({proc.returncode}) after {wall:.1f} s: {tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-runs", type=int, default=2, help="cold runs of each tool")
    parser.add_argument("--runs", type=int, default=3, help="warm runs of each kind")
    args = parser.parse_args()

    from builder.bake.pipeline import recipe_for
    from builder.bake.sources import release_mirror
    from builder.manifest import load_manifest

    recipe = recipe_for(load_manifest(SEED))
    release = recipe.base.release
    packages = list(recipe.base.packages)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-bake-", dir="/var/tmp"))
    mkosi = Mkosi(packages, release, release_mirror(release))
    manifest = work / SEED.name
    from tests.bake_fixture import seed_text  # the copy still names this checkout's app

    text = seed_text()
    manifest.write_text(text)
    runs: dict[str, list[float]] = {k: [] for k in
                                    ("amibake cold", "mkosi cold", "amibake config-only",
                                     "mkosi incremental", "amibake no-op")}
    steps: dict[str, list[dict[str, float]]] = {"cold": [], "config-only": []}
    print(f"{len(packages)} packages, Debian {release}; work in {work}", flush=True)
    try:
        cache = store = mk_out = work
        for i in range(args.cold_runs):
            mk_out = work / f"mkosi-{i}"
            wall = mkosi.build(mk_out)
            runs["mkosi cold"].append(wall)
            print(f"mkosi cold          {wall:7.1f} s  ({mkosi.fmt})", flush=True)
            if i:
                shutil.rmtree(work / f"mkosi-{i - 1}", ignore_errors=True)
            cache, store = work / f"cache-{i}", work / f"images-{i}"
            manifest.write_text(text)
            wall, doc = bake(manifest, store, cache)
            assert not doc["base_layer_cached"], doc
            runs["amibake cold"].append(wall)
            steps["cold"].append(doc["seconds"])
            print(f"amibake cold        {wall:7.1f} s  steps {doc['seconds']}", flush=True)
            if i:
                shutil.rmtree(work / f"cache-{i - 1}", ignore_errors=True)
                shutil.rmtree(work / f"images-{i - 1}", ignore_errors=True)
        extra = work / "extra"
        for i in range(args.runs):
            version = f"1.0.{i + 1}"
            manifest.write_text(
                text.replace("version: 1.0.0", f"version: {version}", 1)
                    .replace("retry_after: 300", f"retry_after: {301 + i}", 1))
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "built" and doc["base_layer_cached"], doc
            runs["amibake config-only"].append(wall)
            steps["config-only"].append(doc["seconds"])
            print(f"amibake config-only {wall:7.1f} s  steps {doc['seconds']}", flush=True)
            (extra / "etc/amibake").mkdir(parents=True, exist_ok=True)
            (extra / "etc/amibake/retry-after").write_text(f"{301 + i}\n")
            wall = mkosi.build(mk_out, extra=extra)
            runs["mkosi incremental"].append(wall)
            print(f"mkosi incremental   {wall:7.1f} s", flush=True)
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "unchanged", doc
            runs["amibake no-op"].append(wall)
            print(f"amibake no-op       {wall:7.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    medians = {k: round(statistics.median(v), 2) for k, v in runs.items() if v}

    def median_step(kind: str, name: str) -> float:
        return round(statistics.median(s.get(name, 0.0) for s in steps[kind]), 2)

    cold_steps = sorted({k for s in steps["cold"] for k in s})
    phases = {k: median_step("cold", k) for k in cold_steps}
    rootfs = phases.get("base", 0.0)
    directory = mkosi.fmt == "directory"
    ratio = medians["amibake cold"] / medians["mkosi cold"]
    rootfs_ratio = rootfs / medians["mkosi cold"]
    result = {
        "benchmark": "bake",
        "command": f"python bench/bake.py --cold-runs {args.cold_runs} --runs {args.runs}",
        "manifest": str(SEED.relative_to(ROOT)),
        "release": release,
        "packages": len(packages),
        "cpus": os.cpu_count(),
        "mkosi": {"version": subprocess.run(["mkosi", "--version"], capture_output=True,
                                             text=True).stdout.strip(),
                  "format": mkosi.fmt, "disk_error": mkosi.disk_error},
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": medians,
        "amibake_cold_phases_median": phases,
        "amibake_config_only_steps_median": {
            k: median_step("config-only", k) for k in sorted({k for s in steps["config-only"]
                                                              for k in s})},
        "steps_seconds": steps,
        "cold_ratio_amibake_vs_mkosi": round(ratio, 3),
        "rootfs_ratio_amibake_vs_mkosi_directory": round(rootfs_ratio, 3) if directory else None,
        "targets": TARGETS,
        "meets_targets": {
            "cold_ratio": (rootfs_ratio if directory else ratio) <= TARGETS["cold_ratio"],
            "config-only": medians["amibake config-only"] <= TARGETS["config-only"],
            "no-op": medians["amibake no-op"] <= TARGETS["no-op"],
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    for k, m in medians.items():
        print(f"median {k:<20} {m:7.2f} s")
    print(f"amibake cold phases (median): {phases}")
    print(f"amibake cold / mkosi cold ({mkosi.fmt}): {ratio:.3f}")
    if directory:
        print(f"amibake rootfs stage (mmdebstrap, initramfs included) / mkosi directory: "
              f"{rootfs_ratio:.3f}; amibake's root fs and disk steps on their own: "
              f"{round(phases.get('rootfs', 0.0) + phases.get('disk', 0.0), 2)} s")
    print(f"targets {TARGETS}: {result['meets_targets']}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; "
          f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
