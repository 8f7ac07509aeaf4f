"""Benchmark: the Rails sample baked as the team's own app (app.code: {path: …}).

    flock /tmp/amibake-heavy.lock .venv/bin/python bench/bake_app.py --runs 3
    ... --cache-dir D     # reuse D ("cold" is then cold only for the app layer)

The rows bench/bake.py has for the Rack sample, for an app with its own
layer; each run is `amibake bake MANIFEST --skip-boot-test --json` as a child
process (wall time includes Python's start-up), on a copy of the seed
manifest with the Rails sample's packages and secret reference
(tests/test_rails_render.py's rails_manifest, the manifest tests/test_vm_rails.py
boots) whose app.code is a copy of cloudinit/app-rails, into a temporary store:

- cold:          base layer (mmdebstrap, unless --cache-dir has it), the
                 config layer, the app layer built (bundler, assets), disk.
- app-code-only: one line of a controller changed, version bumped: base layer
                 from the cache, app layer rebuilt, config layer, disk.
- config-only:   nginx's Retry-After changed, version bumped: the app layer
                 comes from its cache.
- no-op:         the same manifest again.
The three warm kinds are interleaved (app-code-only, no-op, config-only per
round), so they see the same load. Targets: app-code-only <= 15 s, config-only
<= 3 s (issue 16).
Writes bench/results/bake_app.json (figures, the bakes' own step times,
load average before and after).
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
sys.path.insert(0, str(ROOT))

from bench.bake import bake  # noqa: E402  (one way to time a bake)
from tests.test_rails_render import rails_manifest  # noqa: E402  (one Rails sample manifest)

RAILS = ROOT / "cloudinit" / "app-rails"
RESULTS = ROOT / "bench" / "results" / "bake_app.json"
TARGETS = {"app-code-only": 15.0, "no-op": 2.0, "config-only": 3.0}
CONTROLLER = "app/controllers/health_controller.rb"


def manifest_text(work: Path) -> str:
    """The Rails sample manifest, its app.code the copy beside it (app-rails/)."""
    path = rails_manifest(work)
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.startswith("  code:")]
    if len(lines) != 1:
        sys.exit(f"{path}: expected one `  code:` line under app")
    return text.replace(lines[0], "  code: {path: app-rails}", 1)


def measure_floor(cache: Path, disk_path: Path, runs: int) -> dict[str, float]:
    """The parts of a warm bake that no change of the pipeline removes, timed alone."""
    from builder.bake.cache import LayerCache
    from builder.bake.root_image import WorkingImage
    from builder.disk_digest import BLOCKS, PLAIN, file_digest

    image, meta = LayerCache(cache).root_images()[0]
    copy, digest, plain = [], [], []
    for _ in range(runs):
        start = time.monotonic()
        WorkingImage(image, meta).close()
        copy.append(time.monotonic() - start)
        start = time.monotonic()
        file_digest(disk_path, BLOCKS)
        digest.append(time.monotonic() - start)
        start = time.monotonic()
        file_digest(disk_path, PLAIN)
        plain.append(time.monotonic() - start)
    return {"copy_root_fs": round(statistics.median(copy), 2),
            "block_digest_disk": round(statistics.median(digest), 2),
            "sha256_disk": round(statistics.median(plain), 2),
            "disk_apparent_gib": round(disk_path.stat().st_size / 2**30, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of the warm kinds")
    parser.add_argument("--cache-dir", type=Path, help="layer cache (default: a fresh one)")
    parser.add_argument("--note", default="", help="a line for the JSON (the run's context)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-bake-app-"))
    cache = args.cache_dir or work / "cache"
    store = work / "images"
    app = work / "app-rails"
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=RAILS, check=True,
                             capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, tracked):  # the sample as committed, not a test's leftovers
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(RAILS / rel, app / rel)
    text = manifest_text(work)
    manifest = work / "smallpayroll.yaml"
    manifest.write_text(text)
    kinds = ("cold", "app-code-only", "no-op", "config-only")
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    steps: dict[str, list[dict]] = {k: [] for k in kinds}
    cached: dict[str, list[object]] = {k: [] for k in kinds}
    floor: dict[str, float] = {}

    def record(kind: str, wall: float, doc: dict) -> None:
        runs[kind].append(wall)
        steps[kind].append(doc.get("seconds", {}))
        cached[kind].append(doc.get("app_layer_cached"))
        print(f"{kind:<14} {wall:7.1f} s  app layer cached: {doc.get('app_layer_cached')}  "
              f"steps {doc.get('seconds')}", flush=True)

    try:
        record("cold", *bake(manifest, store, cache))
        controller = app / CONTROLLER
        original = controller.read_text()
        version = 0
        for i in range(args.runs):
            version += 1
            controller.write_text(original + f"\n# bench round {i}\n")
            manifest.write_text(text.replace("version: 1.0.0", f"version: 1.0.{version}", 1))
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "built" and doc["app_layer_cached"] is False, doc
            record("app-code-only", wall, doc)
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "unchanged", doc
            record("no-op", wall, doc)
            version += 1
            manifest.write_text(text.replace("version: 1.0.0", f"version: 1.0.{version}", 1)
                                .replace("retry_after: 300", f"retry_after: {301 + i}", 1))
            wall, doc = bake(manifest, store, cache)
            assert doc["action"] == "built" and doc["app_layer_cached"] is True, doc
            record("config-only", wall, doc)
        floor = measure_floor(cache, Path(doc["path"]) / "disk.raw", args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    medians = {k: round(statistics.median(v), 2) for k, v in runs.items() if v}
    if "no-op" in medians:
        floor["python_start_to_no_op"] = medians["no-op"]
    result = {
        "benchmark": "bake_app",
        "manifest": "tests/test_rails_render.py rails_manifest (the seed with the Rails "
                    f"packages) with app.code: {{path: {RAILS.relative_to(ROOT)}}} copied",
        "command": "flock /tmp/amibake-heavy.lock .venv/bin/python bench/bake_app.py "
                   f"--runs {args.runs}" + (f" --cache-dir {args.cache_dir}"
                                            if args.cache_dir else ""),
        "note": args.note,
        "cold_runs": "1 (a cold bake is mmdebstrap of the whole package set; the warm kinds "
                     "get the lock time)" if not args.cache_dir else
                     "1, cold for the app layer only (--cache-dir holds the base layer)",
        "cpus": os.cpu_count(),
        "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": medians,
        "app_layer_cached": cached,
        "steps_seconds": steps,
        "floor_seconds": floor,
        "floor_note": "parts of a warm bake, each timed on its own (medians): "
                      "python_start_to_no_op is the no-op bake (start, recipe, digests); "
                      "copy_root_fs copies the cached root ext4 into memory (beside the "
                      "layers in a bake); block_digest_disk takes image.json's digest "
                      "(sha256-blocks-512k) of the whole stored disk, every data block read "
                      "(a bake reads only the blocks it changed); sha256_disk is the plain "
                      "sha256 image.json had before (holes not read)",
        "targets_seconds": TARGETS,
        "meets_targets": {k: medians[k] <= TARGETS[k] for k in TARGETS if k in medians},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"{'kind':<14} {'median':>8} {'target':>8}")
    for k, m in medians.items():
        target = TARGETS.get(k)
        mark = "" if target is None else "ok" if m <= target else "MISSED"
        shown = f"{target:7.0f}s" if target is not None else "       -"
        print(f"{k:<14} {m:7.1f}s {shown}  {mark}")
    print(f"floor (each part alone): {floor}")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; "
          f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
