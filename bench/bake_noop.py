#!/usr/bin/env python3
"""The no-op bake, process start to exit: this checkout against an older one.

    flock /tmp/amibake-heavy.lock .venv/bin/python bench/bake_noop.py \
        --old /tmp/noop-old --runs 11

The seed (manifests/smallpayroll.yaml) copied into --work, its `app.code` path
naming the Rails sample of the --old checkout (the app's commit is an input:
both checkouts must bake the same app to share one stored image). It is baked
once into --work/images (--skip-boot-test; layers from the cache) unless
already stored. Each round then runs `python -m builder bake … --skip-boot-test
--allow-dirty` once from each checkout, in alternating order, with the same
interpreter (this venv), the same cloud-init tree and the same cache; both
must answer "unchanged". One untimed run each first writes the byte-code and
cloud-init's verdicts (a user's second bake has both). Prints the medians and
their ratio; writes bench/results/bake_noop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "bake_noop.json"
TARGET = 0.3


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def bake_cmd(manifest: Path, store: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["AMIBAKE_CLOUDINIT_ROOT"] = str(ROOT / ".cache" / "cloud-init" / "root")
    return [sys.executable, "-m", "builder", "bake", str(manifest), "--skip-boot-test",
            "--allow-dirty", "--store", str(store), "--json"], env


def prepare(old: Path, work: Path) -> tuple[Path, Path]:
    """The seed naming --old's Rails sample, stored once in work/images."""
    work.mkdir(parents=True, exist_ok=True)
    seed = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    line = "  code: {path: ../cloudinit/app-rails}\n"
    assert line in seed, "the seed's app.code line changed"
    manifest = work / "smallpayroll.yaml"
    app = old / "cloudinit" / "app-rails"
    manifest.write_text(seed.replace(line, f"  code: {{path: {app}}}\n"))
    store = work / "images"
    cmd, env = bake_cmd(manifest, store)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        proc = subprocess.run([*cmd, "--force"], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"bake failed: {proc.stdout}{proc.stderr}")
    return manifest, store


def no_op(tree: Path, manifest: Path, store: Path) -> float:
    cmd, env = bake_cmd(manifest, store)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0 or json.loads(proc.stdout)["action"] != "unchanged":
        sys.exit(f"{tree}: not a no-op ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the older checkout (before)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/amibake-bench-noop"),
                    help="where the manifest copy and its store are kept")
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    trees = {"before": args.old.resolve(), "after": ROOT}
    manifest, store = prepare(trees["before"], args.work)
    for tree in trees.values():
        no_op(tree, manifest, store)  # byte-code and verdicts written
    runs: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(args.runs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for kind in order:
            runs[kind].append(round(no_op(trees[kind], manifest, store), 3))
        print(f"round {i + 1}: before {runs['before'][-1]:.3f} s, "
              f"after {runs['after'][-1]:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    doc = {
        "benchmark": "bake_noop",
        "command": "flock /tmp/amibake-heavy.lock .venv/bin/python bench/bake_noop.py "
                   f"--old {args.old} --runs {args.runs}",
        "what": "`python -m builder bake SEED --skip-boot-test --allow-dirty` of a "
                "stored seed (app.code: the old checkout's Rails sample by path), process "
                "start to exit, byte-code written, interleaved (alternating order)",
        "commits": {"before": git_head(trees["before"]), "after": git_head(ROOT)},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "runs": runs,
        "median_seconds": med,
        "ratio_after_before": round(med["after"] / med["before"], 3),
        "target_seconds": TARGET,
        "target_met": med["after"] <= TARGET,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"median before {med['before']:.3f} s, after {med['after']:.3f} s "
          f"(ratio {doc['ratio_after_before']}); target {TARGET} s: "
          f"{'met' if doc['target_met'] else 'not met'}; {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
