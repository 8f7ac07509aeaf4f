"""Cutover downtime under a steady pgbench write load, several ways, one run.

    .venv/bin/python bench/cutover.py --scale 70      # ≥ 1 GB (pgbench -i -s 70)
    .venv/bin/python bench/cutover.py --old-major 10 --runs 3 --out bench/results/cutover-pg10.json
    .venv/bin/python bench/cutover.py --methods replicate --runs 10 \
        --out bench/results/cutover-replicate10.json

Methods, each onto a fresh new cluster from the same old one, interleaved
run by run (`--runs N`: medians, and p95 by nearest rank):
  seed       the seed's runbook: freeze, `pg_dump | gzip > f`, `zcat f | psql`
  dump       amibake strategy dump: pg_dump -Fd -Z 0 -j 2 + pg_restore -j 2
  dump-stream  the same with `dump_format: stream`: pg_dump -Fc -Z 0 | pg_restore
  dump-copy  `dump_format: copy`: the schema by pg_dump, each table's rows by
             COPY | COPY (FREEZE), 2 tables at once, post-data by pg_restore -j 2;
             its row-count gate reads the COPYs' own counts
  replicate  amibake strategy replicate: initial sync before the window,
             freeze → catch up → sequences → drop subscription in it
  pgcopydb   the contender: freeze, `pgcopydb clone --table-jobs 2
             --index-jobs 2` (Debian's pgcopydb), app role LOGIN on new

`--old-major 10` runs the old server on PostgreSQL 10 (`make old-postgres`),
the oldest major a package here carries; the new one is always 15.

Downtime = writes refused until the new site serves: measured by the app
stand-in (a writer inserting a counter row per transaction as the app role)
as the gap between its last acknowledged insert on the old server and its
first on the new one; it moves to the new server when the run reports the
DNS switch (seed: when the restore ends). Lost writes = acknowledged inserts
missing on the new server + pgbench transactions committed on the old server
(pgbench_history rows) missing on the new one. The amibake runs include
their gates (row counts, sequences, smoke test, DNS switch verified on both
authoritative servers); the per-table md5 gate runs after the switch.
Prints a table and writes bench/results/cutover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# not bench/ itself: its tests.py would shadow the tests/ namespace package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from builder.cutover import maintenance  # noqa: E402
from builder.cutover.config import derive  # noqa: E402
from builder.cutover.db_roles import copy_roles, freeze, set_login  # noqa: E402
from builder.cutover.dns import provider_for  # noqa: E402
from builder.cutover.procedure import run_cutover  # noqa: E402
from builder.proc import run  # noqa: E402
from tests.cutover_fixtures import (  # noqa: E402
    APP_PASSWORD,
    OLD_ADDR,
    SUPER_PASSWORD,
    Cluster,
    Writer,
    cutover_manifest,
    destroy_cluster,
    knot_server,
    make_template,
    old_pg_bin,
    start_cluster,
    web_sites,
)

BENCH_CONF = ("shared_buffers = 256MB", "fsync = on", "full_page_writes = on",
              "max_wal_size = 4GB", "checkpoint_timeout = 30min",
              "maintenance_work_mem = 256MB", "max_parallel_workers_per_gather = 1")


#: bench method → the `dump_format` it runs
DUMP_FORMATS = {"dump": "directory", "dump-stream": "stream", "dump-copy": "copy"}


def _pg_env(c: Cluster, user: str = "app", password: str = APP_PASSWORD) -> dict[str, str]:
    return {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(c.port), "PGDATABASE": "payroll",
            "PGUSER": user, "PGPASSWORD": password}


def _one_int(c: Cluster, query: str) -> int:
    """The single integer a query returns (a count, a size)."""
    value = c.sql(query)[0][0]
    assert isinstance(value, int), value
    return value


def _prepare_old(old: Cluster, scale: int) -> dict[str, float]:
    old.sql("CREATE DATABASE payroll", dbname="postgres")
    old.sql(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
    old.sql("ALTER DATABASE payroll OWNER TO app", dbname="postgres")
    t = time.monotonic()
    run(["pgbench", "-i", "-s", str(scale), "-I", "dtGvp", "-q"], env=_pg_env(old), capture=True)
    init_s = time.monotonic() - t
    old.sql("CREATE TABLE writes (id bigserial PRIMARY KEY, n int NOT NULL UNIQUE, "
            "at timestamptz DEFAULT now()); ALTER TABLE writes OWNER TO app")
    size = _one_int(old, "SELECT pg_database_size('payroll')")
    return {"pgbench_init_s": round(init_s, 1), "db_bytes": size}


def _start_load(old: Cluster, rate: int, clients: int) -> subprocess.Popen[bytes]:
    """pgbench's TPC-B-like writes at a steady rate, as the app role; the
    freeze ends its sessions and it exits."""
    return subprocess.Popen(
        ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", "3600", "-R", str(rate)],
        env=_pg_env(old), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gap(writer: Writer, old: Cluster, new: Cluster) -> float:
    last_old = max(t for t, _, name in writer.log if name == old.name)
    first_new = min(t for t, _, name in writer.log if name == new.name)
    return first_new - last_old


def _seed(old: Cluster, new: Cluster, cfg: Any, writer: Writer, work: Path) -> dict[str, Any]:
    copy_roles(cfg)  # the seed's runbook creates the roles ahead
    t0 = time.monotonic()
    freeze(cfg)
    dump = work / "payroll.sql.gz"
    env = {"PGPASSWORD": SUPER_PASSWORD, "PGUSER": "postgres", "PGHOST": "127.0.0.1"}
    run(["bash", "-c", f"set -o pipefail; pg_dump -p {old.port} payroll | gzip > {dump}"],
        env=env, capture=True)
    t1 = time.monotonic()
    run(["bash", "-c", f"set -o pipefail; zcat {dump} | psql -q -p {new.port} payroll"],
        env=env, capture=True)
    set_login(cfg.new, cfg.app_user, True)
    t2 = time.monotonic()
    writer.target = new
    return {"dump_s": round(t1 - t0, 2), "restore_s": round(t2 - t1, 2),
            "db_window_s": round(t2 - t0, 2), "dump_file_bytes": dump.stat().st_size}


def _pgcopydb(old: Cluster, new: Cluster, cfg: Any, writer: Writer, work: Path) -> dict[str, Any]:
    copy_roles(cfg)  # as for the seed: roles ahead of the window
    t0 = time.monotonic()
    freeze(cfg)

    def uri(c: Cluster) -> str:
        return f"postgres://postgres@127.0.0.1:{c.port}/payroll"

    run(["pgcopydb", "clone", "--source", uri(old), "--target", uri(new), "--dir",
         str(work / "pgcopydb"), "--table-jobs", "2", "--index-jobs", "2"],
        env={"PGPASSWORD": SUPER_PASSWORD}, capture=True)
    set_login(cfg.new, cfg.app_user, True)
    t1 = time.monotonic()
    writer.target = new
    return {"clone_s": round(t1 - t0, 2), "db_window_s": round(t1 - t0, 2)}


#: the window's phases as the steps record them (issue 16's budget)
PHASES = {"maintenance_on": "maintenance", "db_freeze": "freeze", "db_catch_up": "catch_up",
          "db_sequences": "sequences", "db_detach": "detach", "db_dump_restore": "dump_restore",
          "files_final_sync": "files", "verify_db": "gates", "verify_checksums": "gates",
          "verify_files": "gates", "smoke_new_site": "smoke_test", "dns_switch": "dns"}


def _amibake(cfg: Any, writer: Writer, new: Cluster, work: Path) -> dict[str, Any]:
    switched: list[float] = []

    def after(step: str) -> None:
        if step == "dns_switch":
            switched.append(time.monotonic())
            writer.target = new

    t = time.monotonic()
    prepared: list[float] = []

    def after_all(step: str) -> None:
        if step == "await_window":
            prepared.append(time.monotonic() - t)
        after(step)

    state = run_cutover(cfg, provider_for(cfg), work / f"{cfg.strategy}.json", say=lambda s: None,
                        start_now=True, fix_replica_identity=True, after_step=after_all)
    assert state.complete
    durations = {}
    details = {}
    for rec in state.steps:
        if rec.started and rec.finished:
            durations[rec.name] = round((datetime.fromisoformat(rec.finished)
                                         - datetime.fromisoformat(rec.started)).total_seconds(), 3)
        if rec.name in ("db_catch_up", "db_detach", "db_dump_restore", "verify_db",
                        "cleanup_old"):
            details[rec.name] = rec.detail
    f = state.facts
    db = (datetime.fromisoformat(f.new_writable_at or "")
          - datetime.fromisoformat(f.freeze_at or "")).total_seconds()
    phases: dict[str, float] = {}
    after_switch = cfg.cutover.checksum_when == "after_switch"
    for step, phase in PHASES.items():
        if step in durations and not (step == "verify_checksums" and after_switch):
            phases[phase] = round(phases.get(phase, 0.0) + durations[step], 3)
    return {"prepare_before_window_s": round(prepared[0], 1) if prepared else -1,
            "switched_at": switched[0] if switched else None,
            "window_recorded_s": round(state.downtime_s() or -1, 3),
            "db_window_s": round(db, 3), "steps_s": durations, "phases_s": phases,
            "details": details, **_copy_phases(details.get("db_dump_restore", ""))}


def _copy_phases(detail: str) -> dict[str, Any]:
    """dump_format copy's own phases, from its step's detail ("(schema dump
    0.21 s, pre-data 0.05 s, copy …)")."""
    found = re.findall(r"([a-z][a-z -]*) (\d+\.\d+) s", detail.rpartition("(")[2])
    return {"copy_phases_s": {k.strip(): float(v) for k, v in found}} if found else {}


def _method(name: str, old: Cluster, template: Path, knot: Any, sites: Any,
            args: argparse.Namespace) -> dict[str, Any]:
    new = start_cluster(template, f"new-{name}", BENCH_CONF)
    load = None
    writer = None
    try:
        new.sql("CREATE DATABASE payroll", dbname="postgres")
        strategy = "dump" if name.startswith("dump") else "replicate"
        cfg = derive(cutover_manifest(old, new, knot, sites, strategy=strategy,
                                      checksum_when="after_switch", dump_jobs=2,
                                      dump_format=DUMP_FORMATS.get(name, "directory"),
                                      catch_up_timeout=600))
        # back to the starting line: app may log in, site up, DNS on the old address
        set_login(cfg.old, "app", True)
        old.sql("TRUNCATE writes")  # each method's writer counts from 1
        maintenance.switch(cfg, False)
        provider_for(cfg).set(OLD_ADDR, 300)
        load = _start_load(old, args.rate, args.clients)
        writer = Writer(old)
        writer.start()
        time.sleep(args.warmup)
        with tempfile.TemporaryDirectory(prefix="amibake-bench-") as tmp:
            if name == "seed":
                detail = _seed(old, new, cfg, writer, Path(tmp))
            elif name == "pgcopydb":
                detail = _pgcopydb(old, new, cfg, writer, Path(tmp))
            else:
                detail = _amibake(cfg, writer, new, Path(tmp))
            deadline = time.monotonic() + 60
            while not any(n == new.name for _, _, n in writer.log):
                if time.monotonic() > deadline:
                    raise RuntimeError("the writer never reached the new server")
                time.sleep(0.05)
        writer.stop()
        load.wait(30)
        have = {r[0] for r in new.sql("SELECT n FROM writes")}
        lost_acked = len(set(writer.acked) - have)
        hist_old = _one_int(old, "SELECT count(*) FROM pgbench_history")
        hist_new = _one_int(new, "SELECT count(*) FROM pgbench_history")
        gap = _gap(writer, old, new)
        switched_at = detail.pop("switched_at", None)
        if switched_at is not None:
            # from the DNS switch to the app stand-in's first write there
            # (its retry pause and a new connection)
            detail["writer_reconnect_s"] = round(
                min(t for t, _, name in writer.log if name == new.name) - switched_at, 3)
        if "phases_s" in detail:
            # the writer's gap not spent inside a window step from the freeze
            # on: state saves between steps, the writer's retry and reconnect
            inside = sum(v for k, v in detail["phases_s"].items() if k != "maintenance")
            detail["outside_steps_s"] = round(gap - inside, 3)
        return {
            "downtime_s": round(gap, 3),
            "lost_writes": lost_acked + hist_old - hist_new,
            "acked_writes": len(writer.acked),
            "pgbench_txns_moved": hist_new,
            **detail,
        }
    finally:
        if writer is not None and writer.is_alive():
            writer.stop()
        if load is not None and load.poll() is None:
            load.terminate()
            load.wait(10)
        destroy_cluster(new)


def _p(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of at least one value."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-int(q * 100) * len(ordered) // 100) - 1))]


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    down = [r["downtime_s"] for r in runs]
    out: dict[str, Any] = {"runs": len(runs), "downtime_s": down,
                           "downtime_p50_s": round(statistics.median(down), 3),
                           "downtime_p95_s": round(_p(down, 0.95), 3),
                           "lost_writes_total": sum(r["lost_writes"] for r in runs)}
    copy_phases = sorted({k for r in runs for k in r.get("copy_phases_s", {})})
    if copy_phases:
        out["copy_phases_p50_s"] = {k: round(statistics.median(
            r["copy_phases_s"].get(k, 0.0) for r in runs), 3) for k in copy_phases}
    phases = sorted({k for r in runs for k in r.get("phases_s", {})})
    if phases:
        out["phases_p50_s"] = {k: round(statistics.median(
            r["phases_s"].get(k, 0.0) for r in runs), 3) for k in phases}
        out["phases_p95_s"] = {k: round(_p([r["phases_s"].get(k, 0.0) for r in runs], 0.95), 3)
                               for k in phases}
        out["outside_steps_p50_s"] = round(statistics.median(
            r.get("outside_steps_s", 0.0) for r in runs), 3)
        out["writer_reconnect_p50_s"] = round(statistics.median(
            r.get("writer_reconnect_s", 0.0) for r in runs), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ≈ 1.05 GB)")
    ap.add_argument("--rate", type=int, default=200, help="pgbench transactions/s")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the freeze")
    ap.add_argument("--methods", default="seed,dump,replicate")
    ap.add_argument("--runs", type=int, default=1, help="rounds of every method, interleaved")
    ap.add_argument("--old-major", choices=("15", "10"), default="15",
                    help="the old server's PostgreSQL major (10: `make old-postgres`)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cutover.json")
    args = ap.parse_args()
    for var, val in (("AMIBAKE_SECRET_TEST_OLD_DB", SUPER_PASSWORD),
                     ("AMIBAKE_SECRET_TEST_NEW_DB", SUPER_PASSWORD)):
        os.environ[var] = val
    load_before = os.getloadavg()
    template = make_template()
    old_bin = old_pg_bin() if args.old_major == "10" else None
    old_template = make_template(old_bin) if old_bin else template
    old = start_cluster(old_template, "old", BENCH_CONF,
                        **({"bin_dir": old_bin} if old_bin else {}))
    methods = args.methods.split(",")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    try:
        with knot_server() as knot, web_sites() as sites:
            k = knot.key
            os.environ["AMIBAKE_SECRET_TEST_TSIG"] = f"{k.name}:{k.algorithm}:{k.secret}"
            setup = _prepare_old(old, args.scale)
            version = old.sql("SHOW server_version")[0][0]
            print(f"old database: PostgreSQL {version}, {setup['db_bytes'] / 2**30:.2f} GiB "
                  f"(pgbench scale {args.scale}, init {setup['pgbench_init_s']} s)", flush=True)
            for round_ in range(args.runs):
                for name in methods:
                    print(f"{name} (round {round_ + 1}/{args.runs}): running …", flush=True)
                    r = _method(name, old, template, knot, sites, args)
                    results[name].append(r)
                    print(f"{name}: downtime {r['downtime_s']} s, lost writes "
                          f"{r['lost_writes']}" + (f", phases {r['phases_s']}, outside the "
                                                   f"steps {r['outside_steps_s']} (writer "
                                                   f"reconnect {r['writer_reconnect_s']})"
                                                   if "phases_s" in r else ""), flush=True)
    finally:
        destroy_cluster(old)
        shutil.rmtree(template.parent, ignore_errors=True)
        if old_bin is not None:
            shutil.rmtree(old_template.parent, ignore_errors=True)
            shutil.rmtree(old_bin.parent.parent, ignore_errors=True)
    summary = {name: _summary(runs) for name, runs in results.items() if runs}
    doc: dict[str, Any] = {
        "benchmark": "cutover", "old_server": version, "new_server": "15",
        "scale": args.scale, "rate_tps": args.rate, "clients": args.clients,
        "db_bytes": setup["db_bytes"], "runs": args.runs, "summary": summary,
        "methods": results,
        "command": "bench/cutover.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": load_before,
                    "loadavg_at_end": os.getloadavg()},
    }
    p50 = {name: s["downtime_p50_s"] for name, s in summary.items()}
    for a, b in (("seed", "replicate"), ("seed", "dump"), ("pgcopydb", "dump"),
                 ("pgcopydb", "dump-copy"), ("pgcopydb", "dump-stream")):
        if a in p50 and b in p50 and p50[b]:
            doc[f"{a}_over_{b}"] = round(p50[a] / p50[b], 2)
    if "replicate" in summary and args.runs >= 10:
        rep = summary["replicate"]
        doc["targets"] = {"replicate_p50_le_0_5s": rep["downtime_p50_s"] <= 0.5,
                          "replicate_p95_le_1s": rep["downtime_p95_s"] <= 1.0}
    for name in ("dump", "dump-stream", "dump-copy"):
        if "pgcopydb" in p50 and name in p50:
            doc.setdefault("targets", {})[f"{name}_le_pgcopydb"] = p50[name] <= p50["pgcopydb"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"\nold PostgreSQL {version} → 15, {args.runs} round(s); load average "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_end'])} after")
    print(f"{'method':10} {'p50 s':>8} {'p95 s':>8} {'lost':>5}  phases p50 s")
    for name, s_ in summary.items():
        print(f"{name:10} {s_['downtime_p50_s']:>8} {s_['downtime_p95_s']:>8} "
              f"{s_['lost_writes_total']:>5}  {s_.get('phases_p50_s', '')}"
              + (f" + outside the steps {s_['outside_steps_p50_s']} (writer reconnect "
                 f"{s_['writer_reconnect_p50_s']})" if "outside_steps_p50_s" in s_ else ""))
    for key in ("seed_over_replicate", "seed_over_dump", "pgcopydb_over_dump",
                "pgcopydb_over_dump-copy", "pgcopydb_over_dump-stream"):
        if key in doc:
            print(f"{key}: {doc[key]}×")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
