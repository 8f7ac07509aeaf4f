"""Benchmark: `amibake validate` (every manifest), process start to exit.

Runs the installed `amibake validate` N times as a fresh process, warm (its
cache directory holds the verdicts and compiled templates of an earlier run:
the usual case, a manifest edited and validated again) and cold (an empty cache
directory every run: the first validate on a machine), interleaved with two
floors measured the same way: the interpreter alone (`python -c
pass`) and the interpreter plus cloud-init's schema load (bookworm's
cloud-init, PyYAML and jsonschema imported in isolation, `get_schema()`).
Prints the medians and writes bench/results/validate.json. Target: <= 0.5 s.

Python bytecode matters here: with PYTHONDONTWRITEBYTECODE set and no
__pycache__ (the extracted Debian tree has none until something compiles it),
every run compiles ~700 modules from source; the result records the setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.5
AMIBAKE = Path(sys.executable).parent / "amibake"

COMMANDS = {
    "validate": [str(AMIBAKE), "validate"],
    "validate_cold": [str(AMIBAKE), "validate"],
    "python_start": [sys.executable, "-c", "pass"],
    "schema_load": [sys.executable, "-c",
                    "from builder.validate.schema import cloudinit_version; cloudinit_version()"],
}
#: `--against TREE`: another amibake source tree (e.g. `git archive` of an older
#: commit) validating the same manifests warm, interleaved: a ratio of medians
AGAINST = "validate_against"
ENTRY = "import sys; from builder.cli import main; sys.exit(main(sys.argv[1:]))"
#: the extracted Debian cloud-init of this checkout, for a tree that has none
CLOUDINIT_ROOT = ROOT / ".cache" / "cloud-init" / "root"


def timed(argv: list[str], cache: Path, extra_env: dict[str, str] | None = None
          ) -> tuple[float, float]:
    """(wall, CPU user+sys) seconds of one run; CPU is steadier on a shared machine."""
    env = {**os.environ, "AMIBAKE_CACHE_DIR": str(cache), **(extra_env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="also time this amibake source tree's warm validate, interleaved")
    parser.add_argument("--manifests", type=Path, metavar="DIR",
                        help="validate this directory (default: this checkout's manifests/)")
    args = parser.parse_args()
    commands = {name: [*argv, *([str(args.manifests)] if "validate" in name and args.manifests
                                else [])] for name, argv in COMMANDS.items()}
    env: dict[str, dict[str, str]] = {}
    if args.against:
        commands[AGAINST] = [sys.executable, "-c", ENTRY, "validate",
                             str(args.manifests or args.against / "manifests")]
        env[AGAINST] = {"PYTHONPATH": str(args.against.resolve()),
                        "AMIBAKE_CLOUDINIT_ROOT": str(CLOUDINIT_ROOT)}
    with tempfile.TemporaryDirectory(prefix="amibake-bench-validate-") as tmp:
        return measure(args.repeat, Path(tmp), commands, env, args)


def measure(repeat: int, tmp: Path, commands: dict[str, list[str]],
            env: dict[str, dict[str, str]], args: argparse.Namespace) -> int:
    warm = tmp / "warm"
    load_before = os.getloadavg()

    def cache_for(name: str, run: int) -> Path:
        if name == "validate_cold":
            return tmp / f"cold-{run}"
        return tmp / "warm-against" if name == AGAINST else warm

    for name, argv in commands.items():  # warm-up: page cache, __pycache__, the warm cache
        timed(argv, cache_for(name, -1), env.get(name))
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(repeat):  # interleaved, so load changes hit all alike
        for name, argv in commands.items():
            wall, used = timed(argv, cache_for(name, run), env.get(name))
            times[name].append(wall)
            cpu[name].append(used)
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu.items()}
    result = {
        "benchmark": "validate",
        "what": "`amibake validate` of every manifest in manifests/, process start to exit",
        "manifests": sorted(str(p) for p in (args.manifests or ROOT / "manifests").glob("*.yaml")),
        "against": str(args.against) if args.against else None,
        "repeat": repeat,
        "median_s": {name: round(m, 4) for name, m in medians.items()},
        "min_s": {name: round(min(t), 4) for name, t in times.items()},
        "max_s": {name: round(max(t), 4) for name, t in times.items()},
        "cpu_median_s": {name: round(m, 4) for name, m in cpu_medians.items()},
        "target_s": TARGET_S,
        "meets_target": medians["validate"] <= TARGET_S,
        "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "loadavg_before": load_before,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = ROOT / "bench" / "results" / "validate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"amibake validate: median {medians['validate']:.3f} s over {repeat} "
          f"(min {min(times['validate']):.3f}), cold cache {medians['validate_cold']:.3f} s; "
          f"floors: python start "
          f"{medians['python_start']:.3f} s, + cloud-init schema load "
          f"{medians['schema_load']:.3f} s; target <= {TARGET_S} s: "
          f"{'met' if medians['validate'] <= TARGET_S else 'MISSED'}")
    if AGAINST in medians:
        ratio = {"wall": round(medians["validate"] / medians[AGAINST], 3),
                 "cpu": round(cpu_medians["validate"] / cpu_medians[AGAINST], 3)}
        result["ratio_of_medians_vs_against"] = ratio
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"against {args.against}: median {medians[AGAINST]:.3f} s; ratio of medians "
              f"(this / that) wall {ratio['wall']}, CPU {ratio['cpu']}")
    print("CPU medians: " + ", ".join(f"{name} {m:.3f} s" for name, m in cpu_medians.items()))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
