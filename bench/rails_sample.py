"""Benchmark: the Rails sample's release steps and boot, on this machine.

    .venv/bin/python bench/rails_sample.py            # 3 runs of each, medians reported
    .venv/bin/python bench/rails_sample.py --runs 5

Against a real PostgreSQL 15 cluster on loopback, a fresh copy of
cloudinit/app-rails/ per run, RAILS_ENV=production, Debian's Rails 6.1 and
puma (each step is a child process, so Ruby's and Rails' start-up count):

- migrate:        `bin/rails db:migrate` on an empty database
- migrate-noop:   the same again, nothing to do (what every app server would
                  pay if each ran migrations at boot)
- precompile:     `bin/rails assets:precompile` (a bake-time step)
- boot-to-200:    puma started until `GET /` answers 200 (rendered by Rails,
                  reading PostgreSQL)

Prints a table and writes bench/results/rails_sample.json, with the load
average before and after (the machine is shared).
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

from builder.ports import free_port  # noqa: E402
from builder.vm.checks import http_get  # noqa: E402
from builder.wait import NotYet, Waiter, wait_for  # noqa: E402
from tests.cutover_fixtures import destroy_cluster, make_template, start_cluster  # noqa: E402
from tests.test_sample_rails import (  # noqa: E402
    APP,
    DB_PASSWORD,
    DB_USER,
    create_database,
    rails,
    rails_env,
)

RESULTS = ROOT / "bench" / "results" / "rails_sample.json"


def timed_rails(app: Path, env: dict[str, str], task: str) -> float:
    start = time.monotonic()
    done = rails(app, env, task)
    if done.returncode != 0:
        sys.exit(f"{task} failed: {done.stderr.decode(errors='replace')}")
    return time.monotonic() - start


def boot_to_200(app: Path, env: dict[str, str]) -> float:
    port = free_port()
    start = time.monotonic()
    proc = subprocess.Popen(["/usr/bin/puma", "-C", "config/puma.rb"], cwd=app,
                            env={**env, "BIND": f"tcp://127.0.0.1:{port}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ok() -> None:
            if proc.poll() is not None:
                sys.exit(f"puma exited with {proc.returncode}")
            status = http_get(port, "/", timeout=10).status
            if status != 200:
                raise NotYet(f"GET / answered {status}")
        wait_for(ok, Waiter("puma's first 200", attempts=100_000, interval=0.02, timeout=120),
                 retry_on=(OSError,))
        return time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    figures: dict[str, list[float]] = {
        "migrate": [], "migrate-noop": [], "precompile": [], "boot-to-200": []}
    template = make_template()
    cluster = start_cluster(template, "bench-rails")
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-rails-"))
    try:
        cluster.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'", dbname="postgres")
        for n in range(args.runs):
            app = work / f"app{n}"
            shutil.copytree(APP, app)
            create_database(cluster, f"payroll_bench{n}")
            env = rails_env(cluster, f"payroll_bench{n}")
            figures["migrate"].append(timed_rails(app, env, "db:migrate"))
            figures["migrate-noop"].append(timed_rails(app, env, "db:migrate"))
            figures["precompile"].append(timed_rails(app, env, "assets:precompile"))
            figures["boot-to-200"].append(boot_to_200(app, env))
    finally:
        destroy_cluster(cluster)
        shutil.rmtree(template.parent, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    medians = {k: round(statistics.median(v), 2) for k, v in figures.items()}
    doc = {"runs": args.runs, "median_s": medians,
           "all_s": {k: [round(x, 2) for x in v] for k, v in figures.items()},
           "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg()}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"{'step':14} {'median s':>9}   runs")
    for name, value in medians.items():
        print(f"{name:14} {value:>9}   {', '.join(f'{x:.2f}' for x in figures[name])}")
    print(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
