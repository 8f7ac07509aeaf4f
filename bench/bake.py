"""Benchmark: cold bake, config-only rebuild and no-op rebuild, in one run.

    .venv/bin/python bench/bake.py                 # cold in a fresh cache, then warm runs
    .venv/bin/python bench/bake.py --runs 3        # warm runs repeated, medians reported
    .venv/bin/python bench/bake.py --cache-dir D   # reuse D ("cold" only if D is empty)

Each run is `amibake bake MANIFEST --skip-boot-test --json` as a child
process (wall time includes Python's start-up), on a copy of the seed
manifest, into a temporary store:

- cold:         a fresh, empty layer cache: mmdebstrap of the base layer,
                caching it (tar --zstd), the config layer and the whole disk
                image (root ext4, ESP, GPT, GRUB for UEFI and BIOS), sha256.
- config-only:  one role's config changed (nginx's Retry-After) and the
                version bumped: base layer from the cache, new config layer, disk.
- no-op:        the same manifest again: nothing is built, the stored image
                is reported.

Boot tests are not part of these figures (bench/boot.py measures boots).
Targets on 2 cores: cold <= 180 s, config-only <= 15 s, no-op <= 2 s.
Prints a table and writes bench/results/bake.json, with the load average
before and after (the machine is shared).
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

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"
RESULTS = ROOT / "bench" / "results" / "bake.json"
TARGETS = {"cold": 180.0, "config-only": 15.0, "no-op": 2.0}


def bake(manifest: Path, store: Path, cache: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "builder", "bake", str(manifest), "--skip-boot-test",
           "--store", str(store), "--cache-dir", str(cache), "--json"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bake failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return wall, json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs of each kind")
    parser.add_argument("--cache-dir", type=Path, help="layer cache (default: a fresh one)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-bake-"))
    cache = args.cache_dir or work / "cache"
    store = work / "images"
    manifest = work / SEED.name
    text = SEED.read_text()
    manifest.write_text(text)
    runs: dict[str, list[float]] = {"cold": [], "config-only": [], "no-op": []}
    steps: dict[str, list[dict]] = {k: [] for k in runs}
    try:
        wall, doc = bake(manifest, store, cache)
        runs["cold"].append(wall)
        steps["cold"].append(doc["seconds"])
        print(f"cold         {wall:7.1f} s  base cached: {doc['base_layer_cached']}  "
              f"{doc['name']} {doc['version']} {doc['id']}", flush=True)
        for i in range(args.runs):
            version = f"1.0.{i + 1}"
            manifest.write_text(
                text.replace("version: 1.0.0", f"version: {version}", 1)
                    .replace("retry_after: 300", f"retry_after: {301 + i}", 1))
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "built" and doc["base_layer_cached"], doc
            runs["config-only"].append(wall)
            steps["config-only"].append(doc["seconds"])
            print(f"config-only  {wall:7.1f} s  steps {doc['seconds']}", flush=True)
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "unchanged", doc
            runs["no-op"].append(wall)
            print(f"no-op        {wall:7.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    medians = {k: round(statistics.median(v), 2) for k, v in runs.items() if v}
    result = {
        "benchmark": "bake",
        "manifest": str(SEED.relative_to(ROOT)),
        "cpus": os.cpu_count(),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": medians,
        "steps_seconds": steps,
        "targets_seconds": TARGETS,
        "meets_targets": {k: medians[k] <= TARGETS[k] for k in medians},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"{'kind':<12} {'median':>8} {'target':>8}")
    for k, m in medians.items():
        mark = "ok" if m <= TARGETS[k] else "MISSED"
        print(f"{k:<12} {m:7.1f}s {TARGETS[k]:7.0f}s  {mark}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; "
          f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
