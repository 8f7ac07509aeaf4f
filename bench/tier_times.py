"""Benchmark: `make test` per tier: wall time, CPU seconds, test counts.

Runs `make test-fast` (the tier without VMs or bakes; target: under 3 minutes
wall on this 2-core machine) and, with --vm, `make test-vm`, each --runs times
interleaved, and writes bench/results/tests.json: per tier the median wall
time, CPU seconds, pytest's counts, and the slowest test files (JUnit times
summed per file: with --dist loadfile a file runs on one worker, so its sum is
that worker's wall time for it).

CPU is counted in a cpuacct cgroup the tier runs in, so it includes the
servers the tests start (PostgreSQL, nginx, knotd, sshd) even after they
daemonize away from pytest; without the cgroup (no write access to
/sys/fs/cgroup/cpuacct) it falls back to the reaped children's rusage, which
misses them. The floor of a tier on C cores is its CPU seconds / C. Processes
still in the cgroup when the tier ends are servers a test left behind: counted
and listed. Run it under the heavy lock: `flock /tmp/amibake-heavy.lock
.venv/bin/python bench/tier_times.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET_FAST_S = 180.0
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
TIERS = {"fast": "test-fast", "vm": "test-vm"}
#: pytest's last line, e.g. "2632 passed, 3 skipped in 171.20s (0:02:51)"
SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")


class CpuMeter:
    """CPU seconds of a process tree, daemons included (a cpuacct cgroup)."""

    def __init__(self, name: str) -> None:
        self.group: Path | None = CPUACCT / name
        try:
            self.group.mkdir()
        except OSError:
            self.group = None
        self.rusage = resource.getrusage(resource.RUSAGE_CHILDREN)

    @property
    def how(self) -> str:
        return "cpuacct cgroup" if self.group else "rusage of reaped children"

    def enter(self) -> None:
        """preexec_fn: the child (and all it starts) joins the cgroup."""
        if self.group:
            (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> dict[str, float]:
        if self.group:
            usage = int((self.group / "cpuacct.usage").read_text()) / 1e9
            stat = dict(line.split() for line in
                        (self.group / "cpuacct.stat").read_text().splitlines())
            hz = os.sysconf("SC_CLK_TCK")
            return {"cpu_s": round(usage, 1), "user_s": round(int(stat["user"]) / hz, 1),
                    "sys_s": round(int(stat["system"]) / hz, 1)}
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        user, sys_ = now.ru_utime - self.rusage.ru_utime, now.ru_stime - self.rusage.ru_stime
        return {"cpu_s": round(user + sys_, 1), "user_s": round(user, 1), "sys_s": round(sys_, 1)}

    def leftovers(self) -> list[str]:
        """Live (not zombie) processes still in the cgroup: what a test left running."""
        if not self.group:
            return []
        left = []
        pids = [pid for procs in self.group.rglob("cgroup.procs")  # workers' groups too
                for pid in procs.read_text().split()]
        for pid in pids:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    left.append(f"{pid} {cmd.decode(errors='replace').strip()[:120]}")
        return left

    def close(self) -> None:
        if self.group:
            # the workers' groups first; zombies leave once PID 1 reaps them, a
            # server a test left running keeps its group (see leftovers)
            groups = sorted((p.parent for p in self.group.rglob("cgroup.procs")),
                            key=lambda g: -len(g.parts))
            for group in groups:
                for _ in range(50):
                    try:
                        group.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)


@contextlib.contextmanager
def cpu_meter(tier: str) -> Iterator[CpuMeter]:
    meter = CpuMeter(f"amibake-bench-tests-{os.getpid()}-{tier}")
    try:
        yield meter
    finally:
        meter.close()


# ---------------------------------------------------------------- pytest plugin
# `-p bench.tier_times` with $AMIBAKE_TEST_CPU_DIR set: each pytest process (each
# xdist worker) moves into a cpuacct cgroup of its own, nested in the tier's,
# and writes the CPU seconds (its daemons included) and wall seconds of every
# test file it ran to $AMIBAKE_TEST_CPU_DIR/<pid>.json.

_profile: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # type: ignore[arg-type]
_own_group: list[Path] = []


def _cgroup_of_self() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return CPUACCT / path.lstrip("/")
    return None


def pytest_configure(config: object) -> None:
    if not os.environ.get("AMIBAKE_TEST_CPU_DIR"):
        return
    parent = _cgroup_of_self()
    if parent is None:
        return
    group = parent / f"pytest-{os.getpid()}"
    with contextlib.suppress(OSError):
        group.mkdir()
        (group / "cgroup.procs").write_text(str(os.getpid()))
        _own_group.append(group)


def _usage() -> float:
    return int((_own_group[0] / "cpuacct.usage").read_text()) / 1e9 if _own_group else 0.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: object) -> Iterator[None]:
    cpu, wall = _usage(), time.perf_counter()
    yield
    entry = _profile[item.location[0]]
    entry[0] += _usage() - cpu
    entry[1] += time.perf_counter() - wall
    entry[2] += 1


def pytest_unconfigure(config: object) -> None:
    out = os.environ.get("AMIBAKE_TEST_CPU_DIR")
    if not out or not _own_group:
        return
    if _profile:
        Path(out, f"{os.getpid()}.json").write_text(json.dumps(
            {f: {"cpu_s": c, "wall_s": w, "tests": n} for f, (c, w, n) in _profile.items()}))
    group = _own_group.pop()
    with contextlib.suppress(OSError):
        (group.parent / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()  # fails while a server the tests left is still in it


def file_profile(directory: Path, top: int) -> list[dict[str, object]]:
    """The per-file CPU and wall seconds the workers wrote, costliest CPU first."""
    merged: dict[str, dict[str, float]] = {}
    for part in directory.glob("*.json"):
        for name, entry in json.loads(part.read_text()).items():
            into = merged.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0, "tests": 0})
            for key in into:
                into[key] += entry[key]
    ranked = sorted(merged.items(), key=lambda kv: -kv[1]["cpu_s"])[:top]
    return [{"file": name, "cpu_s": round(e["cpu_s"], 1), "wall_s": round(e["wall_s"], 1),
             "tests": int(e["tests"])} for name, e in ranked]


# ---------------------------------------------------------------- the bench


def slowest_files(junit: Path, top: int) -> list[dict[str, object]]:
    per_file: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("classname", "").split(".")
        path = "/".join(name[:2]) + ".py" if name[:1] == ["tests"] else ".".join(name)
        per_file[path] += float(case.get("time", 0))
        count[path] += 1
    ranked = sorted(per_file.items(), key=lambda kv: -kv[1])[:top]
    return [{"file": f, "seconds": round(s, 1), "tests": count[f]} for f, s in ranked]


def run_tier(make: list[str], tier: str, tmp: Path, run: int, top: int) -> dict[str, object]:
    junit = tmp / f"{tier}-{run}.xml"
    profile = tmp / f"{tier}-{run}-cpu"
    profile.mkdir()
    env = {**os.environ, "AMIBAKE_TEST_CPU_DIR": str(profile),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])),
           "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} --junitxml={junit} "
                             "-p bench.tier_times"}
    load_before = os.getloadavg()
    with cpu_meter(tier) as meter:
        start = time.perf_counter()
        proc = subprocess.run([*make, TIERS[tier]], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              preexec_fn=meter.enter)
        wall = time.perf_counter() - start
        cpu = meter.seconds()
        left = meter.leftovers()
    lines = proc.stdout.splitlines()
    summary = next((m.group(1) for line in reversed(lines) if (m := SUMMARY.match(line))), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    if proc.returncode != 0:
        print("\n".join(lines[-30:]), file=sys.stderr)
    result: dict[str, object] = {
        "exit_code": proc.returncode, "wall_s": round(wall, 1), **cpu,
        "counts": counts, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "left_running": left,
        "slowest_files": slowest_files(junit, top) if junit.exists() else [],
        "costliest_files_cpu": file_profile(profile, top),
    }
    print(f"{tier} tier run {run + 1}: {wall:.1f} s wall, {cpu['cpu_s']:.1f} s CPU "
          f"({meter.how}), {summary or 'no pytest summary'}, exit {proc.returncode}, "
          f"load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
          + (f", {len(left)} processes left running" if left else ""), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vm", action="store_true", help="also time `make test-vm`")
    parser.add_argument("--runs", type=int, default=1, help="runs per tier, interleaved")
    parser.add_argument("--top", type=int, default=15, help="slowest files to record")
    parser.add_argument("--make", default="make",
                        help="the make command (e.g. 'make -o .venv/bin/amibake' in a "
                             "worktree whose .venv links to another checkout's)")
    args = parser.parse_args()
    make = [*shlex.split(args.make), "--no-print-directory"]
    tiers = ["fast", "vm"] if args.vm else ["fast"]
    runs: dict[str, list[dict[str, object]]] = {t: [] for t in tiers}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="amibake-bench-tests-") as tmp:
        for run in range(args.runs):
            for tier in tiers:
                runs[tier].append(run_tier(make, tier, Path(tmp), run, args.top))
    result: dict[str, object] = {
        "benchmark": "tests",
        "what": "`make test-fast` and `make test-vm`: wall, CPU seconds (daemons included), "
                "test counts per tier",
        "command": shlex.join([sys.executable, *sys.argv]),
        "runs": args.runs,
        "jobs": os.environ.get("JOBS") or next(
            (line.split("?=")[1].strip() for line in (ROOT / "Makefile").read_text().splitlines()
             if line.startswith("JOBS ?=")), None),
        "tiers": {},
        "target_fast_s": TARGET_FAST_S,
        "loadavg_before": load_before,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    tiers_out: dict[str, object] = {}
    for tier, results in runs.items():
        walls = [float(r["wall_s"]) for r in results]  # type: ignore[arg-type]
        cpus = [float(r["cpu_s"]) for r in results]  # type: ignore[arg-type]
        tiers_out[tier] = {
            "make_target": TIERS[tier],
            "median_wall_s": round(statistics.median(walls), 1),
            "median_cpu_s": round(statistics.median(cpus), 1),
            "floor_s": round(statistics.median(cpus) / (os.cpu_count() or 1), 1),
            "runs": results,
        }
    result["tiers"] = tiers_out
    fast = tiers_out["fast"]
    assert isinstance(fast, dict)
    result["meets_target"] = all(r["exit_code"] == 0 for r in runs["fast"]) and \
        fast["median_wall_s"] <= TARGET_FAST_S
    out = ROOT / "bench" / "results" / "tests.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for tier, t in tiers_out.items():
        assert isinstance(t, dict)
        print(f"{tier}: median {t['median_wall_s']} s wall over {args.runs} run(s), "
              f"{t['median_cpu_s']} s CPU (floor on {os.cpu_count()} cores: {t['floor_s']} s)"
              + (f"; target <= {TARGET_FAST_S:.0f} s: "
                 f"{'met' if result['meets_target'] else 'MISSED'}" if tier == "fast" else ""))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(r["exit_code"] == 0 for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
