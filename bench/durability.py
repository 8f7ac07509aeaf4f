"""Benchmark: database durability without a VM, recovery time and recovery point.

    .venv/bin/python bench/durability.py --part rto --scale 60 --runs 3   # ~1 GB
    .venv/bin/python bench/durability.py --part rpo --timeouts 60,2

RTO: a pgbench database (`pgbench -i -s SCALE`) is backed up once with
pgBackRest into moto's S3 (over TLS, repository encrypted, zstd) and dumped
once with `pg_dump -Fd -j 2`. Then, interleaved, RUNS times each: from an
empty data directory to a cluster accepting connections,
- engine: `amibake db restore`'s path (pgBackRest restore, process-max 2,
  WAL replay, promote) and `pg_ctl start -w`;
- dump: initdb, start, `pg_restore -j 2` of the dump.
Medians reported. Target: engine <= 0.5 x dump. moto is the S3 here: a
Python server that decrypts TLS and stores in memory on the same 2 cores,
so the engine's figure includes the emulator's cost.

RPO: pgbench writes at a steady rate (-R 100) into a cluster that archives
WAL with archive_timeout T; the postmaster and all its processes are killed
with SIGKILL and the data directory deleted (the host is gone); the latest
state is restored from S3. Lost = transactions pgbench saw committed (its
per-transaction log) minus pgbench_history rows restored; span = last
acknowledged commit minus the last restored row's time. Target: span <= T.

Writes bench/results/durability.json with the load average before and after
(the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.db.repo import Repo, open_repo  # noqa: E402
from builder.db.restore import Target, restore  # noqa: E402
from builder.manifest import load_manifest  # noqa: E402
from builder.proc import run  # noqa: E402
from tests.cutover_fixtures import (  # noqa: E402
    PG_BIN,
    PG_OS_USER,
    SUPER_PASSWORD,
    Cluster,
    _own_tmpdir,
    free_port,
    make_template,
)
from tests.db_fixtures import (  # noqa: E402
    PASSPHRASE_ENV,
    archiving_cluster,
    full_backup,
    manifest_with_backup,
    serve_s3_tls,
)

RESULTS = ROOT / "bench" / "results" / "durability.json"
PG = {"user": PG_OS_USER, "group": PG_OS_USER}


def _env(c: Cluster) -> dict[str, str]:
    return {"PGHOST": "127.0.0.1", "PGPORT": str(c.port), "PGUSER": "postgres",
            "PGPASSWORD": SUPER_PASSWORD, "PGDATABASE": "bench"}


def _own_dir(prefix: str) -> Path:
    return _own_tmpdir(prefix, PG_OS_USER)


def _full_backup(repo: Repo, cluster: Cluster) -> float:
    start = time.monotonic()
    full_backup(repo, cluster)
    return time.monotonic() - start


def _engine_restore(repo: Repo) -> float:
    base = _own_dir("amibake-rto-")
    try:
        start = time.monotonic()
        restore(repo, base / "data", Target("latest"))
        c = Cluster("rto", base / "data", free_port())
        c.start()
        elapsed = time.monotonic() - start
        c.stop("fast")
        return elapsed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _dump_restore(template: Path, dump: Path) -> float:
    base = _own_dir("amibake-rto-dump-")
    try:
        start = time.monotonic()
        run([PG_BIN / "initdb", "-D", base / "data", "-U", "postgres", "--auth-local=trust",
             "--auth-host=trust", "-E", "UTF8", "--locale=C.UTF-8"], capture=True, **PG)
        c = Cluster("dump", base / "data", free_port())
        with open(c.data / "postgresql.conf", "a") as fh:
            fh.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                     "shared_buffers = 32MB\n")
        c.start()
        try:
            env = _env(c)
            run([PG_BIN / "createdb", "bench"], env=env, capture=True)
            run([PG_BIN / "pg_restore", "-j", "2", "-d", "bench", dump], env=env, capture=True)
            elapsed = time.monotonic() - start
        finally:
            c.stop("fast")
        return elapsed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rto(args: argparse.Namespace, template: Path, work: Path, s3: Any) -> dict[str, Any]:
    manifest = load_manifest(manifest_with_backup(work, s3, prefix="bench-rto"))
    with ExitStack() as stack:
        repo = stack.enter_context(open_repo(manifest))
        cluster = archiving_cluster(stack, repo, template, "bench")
        cluster.sql("CREATE DATABASE bench", dbname="postgres")
        start = time.monotonic()
        run(["pgbench", "-i", "-s", str(args.scale), "-q"], env=_env(cluster), capture=True)
        init_s = time.monotonic() - start
        [[size]] = cluster.sql("SELECT pg_database_size('bench')", dbname="bench")
        backup_s = _full_backup(repo, cluster)
        dump = _own_dir("amibake-dump-") / "dump"
        stack.callback(shutil.rmtree, dump.parent, True)
        start = time.monotonic()
        run([PG_BIN / "pg_dump", "-Fd", "-j", "2", "-f", dump, "bench"], env=_env(cluster),
            capture=True)
        dump_s = time.monotonic() - start
        cluster.stop("fast")  # only S3 and the dump are left to restore from
        engine, dumped = [], []
        for i in range(args.runs):
            order = (("engine", "dump") if i % 2 == 0 else ("dump", "engine"))
            for kind in order:
                if kind == "engine":
                    engine.append(_engine_restore(repo))
                else:
                    dumped.append(_dump_restore(template, dump))
                print(f"run {i + 1} {kind}: {(engine if kind == 'engine' else dumped)[-1]:.1f} s",
                      flush=True)
    e, d = statistics.median(engine), statistics.median(dumped)
    return {"scale": args.scale, "db_bytes": int(str(size)), "pgbench_init_s": round(init_s, 1),
            "backup_s": round(backup_s, 1), "pg_dump_s": round(dump_s, 1),
            "engine_restore_s": [round(x, 1) for x in engine],
            "dump_restore_s": [round(x, 1) for x in dumped],
            "engine_median_s": round(e, 1), "dump_median_s": round(d, 1),
            "ratio": round(e / d, 2), "target_ratio": 0.5, "met": e <= 0.5 * d}


def _kill_host(cluster: Cluster) -> None:
    """SIGKILL the postmaster and every process it started, then drop its disk."""
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    children = run(["pgrep", "-P", str(pid)], capture=True, check=False).stdout.split()
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
    cluster.running = False


def rpo_once(timeout: int, args: argparse.Namespace, template: Path, work: Path,
             s3: Any) -> dict[str, Any]:
    path = manifest_with_backup(work, s3, prefix=f"bench-rpo-{timeout}",
                                name=f"rpo-{timeout}.yaml", archive_timeout=timeout)
    manifest = load_manifest(path)
    with ExitStack() as stack:
        repo = stack.enter_context(open_repo(manifest))
        cluster = archiving_cluster(stack, repo, template, "bench")
        cluster.sql("CREATE DATABASE bench", dbname="postgres")
        run(["pgbench", "-i", "-s", "1", "-q"], env=_env(cluster), capture=True)
        _full_backup(repo, cluster)
        logdir = _own_dir("amibake-rpo-log-")
        stack.callback(shutil.rmtree, logdir, True)
        load = subprocess.Popen(
            ["pgbench", "-n", "-c", "2", "-j", "2", "-R", str(args.rate), "-T", "3600",
             "-l", "--log-prefix", str(logdir / "tx")],
            env={**os.environ, **_env(cluster)}, cwd=logdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.load_seconds)
        _kill_host(cluster)
        load.wait(timeout=60)
        acked = []
        for log in logdir.glob("tx*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                # client_id transaction_no time script_no time_epoch time_us [...]
                if len(parts) >= 6 and parts[2] != "failed":
                    acked.append(int(parts[4]) + int(parts[5]) / 1e6)
        shutil.rmtree(cluster.data, ignore_errors=True)  # the instance store is gone
        base = _own_dir("amibake-rpo-")
        stack.callback(shutil.rmtree, base, True)
        restore(repo, base / "data", Target("latest"))
        c = Cluster("rpo", base / "data", free_port())
        c.start()
        stack.callback(c.stop, "fast")
        rows, last = c.sql("SELECT count(*), max(mtime) FROM pgbench_history", dbname="bench")[0]
    last_acked = max(acked) if acked else 0.0
    last_restored = last.replace(tzinfo=UTC).timestamp() if isinstance(last, datetime) else 0.0
    span = max(0.0, last_acked - last_restored)
    return {"archive_timeout": timeout, "acknowledged": len(acked), "restored": int(rows),
            "lost": len(acked) - int(rows), "lost_span_s": round(span, 2),
            "met": span <= timeout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("rto", "rpo", "all"), default="all")
    parser.add_argument("--scale", type=int, default=60, help="pgbench scale (60 ≈ 1 GB)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved restores of each kind")
    parser.add_argument("--timeouts", default="60,2", help="archive_timeout values for RPO")
    parser.add_argument("--rate", type=int, default=100, help="pgbench transactions/s")
    parser.add_argument("--load-seconds", type=float, default=90,
                        help="seconds of writes before the kill")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: clusters run as the postgres user")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault(PASSPHRASE_ENV, "bench passphrase")
    doc: dict[str, Any] = {"load_before": os.getloadavg()}
    template = make_template()
    work = Path(tempfile.mkdtemp(prefix="amibake-bench-db-"))
    try:
        with serve_s3_tls() as s3:
            if args.part in ("rto", "all"):
                doc["rto"] = rto(args, template, work, s3)
                print(json.dumps(doc["rto"], indent=2), flush=True)
            if args.part in ("rpo", "all"):
                doc["rpo"] = [rpo_once(int(t), args, template, work, s3)
                              for t in args.timeouts.split(",")]
                print(json.dumps(doc["rpo"], indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(template.parent, ignore_errors=True)
    doc["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**old, **doc}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
