"""Strategy `replicate` end to end on real servers: writes running through
the cutover, nothing acknowledged lost, writes refused after the freeze."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from builder.cutover import db_replicate, verify
from builder.cutover.config import derive
from builder.cutover.db_roles import copy_roles, freeze, set_login
from builder.cutover.dns import provider_for
from builder.cutover.procedure import run_cutover, status_doc
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    APP_PASSWORD,
    NEW_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    Writer,
    cutover_manifest,
)


def _acked_on(cluster: Cluster, acked: list[int]) -> set[int]:
    have = {r[0] for r in cluster.sql("SELECT n FROM writes")}
    return set(acked) - have


def test_replicate_end_to_end_with_writes(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, uploads))
    dns = provider_for(cfg)
    state_path = tmp_path / "state.json"
    writer = Writer(old)
    writer.start()
    refused_after_freeze: list[str] = []
    refused_on_new: list[str] = []

    def after(step: str) -> None:
        if step in ("db_copy_roles", "db_replication_setup", "db_sequences"):
            # no app server started early on the new stack can write there
            with pytest.raises(psycopg.OperationalError) as exc:
                psycopg.connect(new.dsn(user="app", password=APP_PASSWORD))
            refused_on_new.append(str(exc.value))
        if step == "db_freeze":
            # the app role is refused on the old server from now on
            with pytest.raises(psycopg.OperationalError) as exc:
                psycopg.connect(old.dsn(user="app", password=APP_PASSWORD))
            refused_after_freeze.append(str(exc.value))
            status, headers, _ = verify.fetch(sites[0].url, "/", SERVER_NAME)
            assert status == 503 and headers["retry-after"] == "300"
        if step == "dns_switch":
            writer.target = new  # resolvers now send the app to the new site

    try:
        state = run_cutover(cfg, dns, state_path, say=print, start_now=True, after_step=after)
    finally:
        writer.stop()
    assert state.complete
    assert refused_after_freeze and "not permitted to log in" in refused_after_freeze[0]
    assert len(refused_on_new) == 3 and all("not permitted to log in" in e
                                            for e in refused_on_new)
    with psycopg.connect(new.dsn(user="app", password=APP_PASSWORD)) as c:  # after detach
        # the materialized view is populated on the new server, as on the old one
        totals = c.execute("SELECT employees, salaries FROM payroll_totals").fetchall()
    assert totals == old.sql("SELECT employees, salaries FROM payroll_totals")
    assert totals[0][0] == 500
    # every acknowledged insert is on the new server; some happened before the freeze
    assert writer.acked and not _acked_on(new, writer.acked)
    assert writer.refused > 0
    acked_on_old = {r[0] for r in old.sql("SELECT n FROM writes")}
    assert acked_on_old and acked_on_old <= set(writer.acked)
    # the sequence continues on the new server past every id used on the old one
    max_old = old.sql("SELECT max(id) FROM writes")[0][0]
    nxt = new.sql("INSERT INTO writes (n) VALUES (-1) RETURNING id")[0][0]
    assert nxt > max_old
    # replication is gone from both sides
    assert not new.sql("SELECT 1 FROM pg_subscription")
    assert not old.sql("SELECT 1 FROM pg_replication_slots")
    assert not old.sql("SELECT 1 FROM pg_publication")
    # DNS moved, with the low TTL, on both authoritative addresses
    assert knot.query(f"{SERVER_NAME}.", "127.0.0.1") == ((NEW_ADDR,), 5)
    assert knot.query(f"{SERVER_NAME}.", NEW_ADDR) == ((NEW_ADDR,), 5)
    # files arrived
    assert sorted(p.name for p in uploads[1].rglob("*")) == sorted(
        p.name for p in uploads[0].rglob("*"))
    # downtime measured from the recorded events
    doc = status_doc(cfg, state_path)
    assert doc["complete"] and doc["downtime_s"] is not None and doc["downtime_s"] > 0
    assert [s["status"] for s in doc["steps"]] == ["done"] * len(doc["steps"])
    assert db_replicate.NAME not in str(old.sql("SELECT slot_name FROM pg_replication_slots"))


REPLICATE_STEPS = [
    "preflight", "dns_lower_ttl", "db_copy_roles", "db_replication_setup", "files_presync",
    "await_window", "db_vacuum", "maintenance_on", "db_freeze", "db_catch_up", "db_sequences",
    "db_detach", "files_final_sync", "verify_db", "verify_checksums", "verify_files",
    "smoke_new_site", "dns_switch", "cleanup_old",
]


class Crash(Exception):
    pass


def test_crash_and_resume_at_every_step(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    """Kill the run after the work of step k (before it is recorded), for every
    k in turn; each re-run resumes at k, repeats it, and the end is the same
    as an uninterrupted run."""
    from builder.cutover.state import CutoverState
    from builder.cutover.steps import forward_steps

    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, uploads))
    assert [s.name for s in forward_steps(cfg)] == REPLICATE_STEPS
    dns = provider_for(cfg)
    path = tmp_path / "state.json"
    for k, name in enumerate(REPLICATE_STEPS):
        def crash(step: str, name: str = name) -> None:
            if step == name:
                raise Crash(step)

        with pytest.raises(Crash):
            run_cutover(cfg, dns, path, say=lambda s: None, start_now=True, after_step=crash)
        on_disk = CutoverState.load(path)
        assert [r.status for r in on_disk.steps] == (
            ["done"] * k + ["running"] + ["pending"] * (len(REPLICATE_STEPS) - k - 1))
    state = run_cutover(cfg, dns, path, say=lambda s: None, start_now=True)
    assert state.complete
    starts = [e["step"] for e in state.events if e["event"] == "start"]
    # each step ran exactly twice: the crashed attempt and its resumption
    assert starts == [n for n in REPLICATE_STEPS for _ in (0, 1)]
    # final state as an uninterrupted run leaves it
    old_sums, new_sums = verify.both(verify.table_checksums, cfg.old, cfg.new)
    assert old_sums == new_sums and len(old_sums) == 3
    assert verify.sequences(cfg.old) == verify.sequences(cfg.new)
    assert not new.sql("SELECT 1 FROM pg_subscription")
    assert not old.sql("SELECT 1 FROM pg_replication_slots")
    assert not old.sql("SELECT 1 FROM pg_publication")
    assert new.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    assert old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(False,)]
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 5)
    assert state.facts.old_address == "127.0.0.1" and state.facts.old_ttl == 300
    assert not state.facts.pending_old_cleanup


def test_old_server_dies_after_the_freeze(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    """The old cluster stops once the replica has caught up: the subscription is
    still dropped (DISABLE, slot_name = NONE, DROP); the row counts taken at
    the freeze still serve, the content checksums wait for the old server;
    once it is back the slot left there is dropped."""
    from builder.errors import UserError

    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"

    def die(step: str) -> None:
        if step == "db_catch_up":
            old.stop("immediate")

    # the row counts were taken in the background from the freeze on: if they
    # finished before the old server died the counts gate passes and the
    # checksum gate is the one that needs the old server
    gone = "(row counts|table checksums): .*(Connection refused|closed the connection)"
    with pytest.raises(UserError, match=gone):
        run_cutover(cfg, dns, path, say=print, start_now=True, after_step=die)
    doc = status_doc(cfg, path)
    steps = {s["name"]: s["status"] for s in doc["steps"]}
    assert steps["db_detach"] == "done"
    assert "failed" in (steps["verify_db"], steps["verify_checksums"])
    assert not new.sql("SELECT 1 FROM pg_subscription")
    assert doc["pending_old_cleanup"] == ["publication:amibake_cutover", "slot:amibake_cutover",
                                          "role:amibake_cutover_repl"]
    # the new server took over the sequences recorded at the freeze
    assert new.sql("SELECT last_value FROM employees_id_seq") == [(500,)]
    assert knot.query(f"{SERVER_NAME}.")[0] == ("127.0.0.1",)  # DNS not moved
    old.start()
    assert old.sql("SELECT slot_name FROM pg_replication_slots") == [("amibake_cutover",)]
    state = run_cutover(cfg, dns, path, say=print, start_now=True)
    assert state.complete and not state.facts.pending_old_cleanup
    assert not old.sql("SELECT 1 FROM pg_replication_slots")
    assert not old.sql("SELECT 1 FROM pg_publication")
    assert knot.query(f"{SERVER_NAME}.")[0] == (NEW_ADDR,)


def test_table_without_primary_key(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    from builder.errors import UserError

    old, new = pg_pair
    old.sql("CREATE TABLE audit_log (at timestamptz DEFAULT now(), what text);"
            "ALTER TABLE audit_log OWNER TO app;"
            "INSERT INTO audit_log (what) SELECT 'event ' || g FROM generate_series(1, 50) g")
    cfg = derive(cutover_manifest(old, new, knot, sites))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"
    with pytest.raises(UserError, match=r"replica identity.*public\.audit_log") as exc:
        run_cutover(cfg, dns, path, say=print, start_now=True)
    assert "--fix-replica-identity" in exc.value.hint
    # refused before anything changed: no publication, TTL untouched, and the
    # live server still updates the table
    assert not old.sql("SELECT 1 FROM pg_publication")
    assert knot.query(f"{SERVER_NAME}.")[1] == 300
    old.sql("UPDATE audit_log SET what = what || '!' WHERE what = 'event 1'")
    state = run_cutover(cfg, dns, path, say=print, start_now=True, fix_replica_identity=True)
    assert state.complete
    assert old.sql("SELECT relreplident FROM pg_class WHERE relname = 'audit_log'") == [("f",)]
    assert sorted(new.sql("SELECT what FROM audit_log")) == sorted(
        old.sql("SELECT what FROM audit_log"))


def test_freeze_lsn_is_flushed_and_reached_by_the_catch_up(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    """The window's catch-up: the freeze's final LSN is past every commit and
    already flushed on the old server (its WAL sender can send up to it at
    once); once the subscriber has applied past it, every acknowledged write
    is on the new server, flushed there."""
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    copy_roles(cfg)
    db_replicate.setup(cfg, print)
    writer = Writer(old)
    writer.start()
    try:
        while len(writer.acked) < 50:
            writer.stop_event.wait(0.01)
        lsn, _ = freeze(cfg)
    finally:
        writer.stop()
    flushed, inserted = old.sql(f"""SELECT pg_current_wal_flush_lsn() >= '{lsn}'::pg_lsn,
                                           pg_current_wal_insert_lsn() >= '{lsn}'::pg_lsn""")[0]
    assert flushed and inserted
    detail = db_replicate.wait_caught_up(cfg, lsn, timeout=60)
    assert detail.startswith(f"caught up to {lsn}")
    assert not _acked_on(new, writer.acked)  # every acknowledged insert is there
    # ... and on the new server's disk: the last applied commit's local WAL is
    # flushed (the subscription commits asynchronously; the wait flushed it)
    origin = f"'pg_' || (SELECT oid FROM pg_subscription WHERE subname = '{db_replicate.NAME}')"
    applied, local_flush = new.sql(f"""
        SELECT remote_lsn::text, pg_current_wal_flush_lsn() >= local_lsn
          FROM pg_replication_origin_status WHERE external_id = {origin}""")[0]
    assert f"last applied commit {applied}" in detail and local_flush is True
    set_login(cfg.old, cfg.app_user, True)
    db_replicate.detach(cfg)


def test_gate_refuses_a_row_lost_on_the_new_server_after_the_catch_up(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row-count gate counts the new server as it is once caught up: a row
    gone there after the catch-up (the subscription had delivered it) fails
    the gate, and DNS stays on the old site."""
    from builder.errors import UserError

    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    caught_up = db_replicate.wait_caught_up

    def then_lose_a_row(*args: object, **kw: object) -> str:
        detail = caught_up(*args, **kw)  # type: ignore[arg-type]
        if old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(False,)]:
            # the window's catch-up (db_vacuum waits for the subscriber too)
            assert new.sql("SELECT count(*) FROM payslips") == [(3000,)]
            new.sql("DELETE FROM payslips WHERE employee_id = 1 AND month = '2026-01-01'")
        return detail

    monkeypatch.setattr(db_replicate, "wait_caught_up", then_lose_a_row)
    with pytest.raises(UserError, match=r"gate failed: row counts: 1 differ: "
                                        r"public\.payslips: old 3000 new 2999"):
        run_cutover(cfg, provider_for(cfg), tmp_path / "state.json", say=print, start_now=True)
    doc = status_doc(cfg, tmp_path / "state.json")
    assert {s["name"]: s["status"] for s in doc["steps"]}["verify_db"] == "failed"
    assert knot.query(f"{SERVER_NAME}.")[0] == ("127.0.0.1",)  # DNS not moved


def test_row_counts_start_after_the_freeze_and_the_catch_up(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window's row counts run in the background: the old server's once the
    app can no longer write there (role NOLOGIN, no session of it left), the
    new server's once every write acknowledged on the old one has arrived."""
    from builder.cutover import steps

    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    count, real_freeze = steps._count, steps.freeze
    seen: dict[str, object] = {}
    frozen: list[bool] = []
    writer = Writer(old)

    def slow_freeze(*args: object, **kw: object) -> object:
        time.sleep(0.2)  # a count started ahead of the freeze would run meanwhile
        done = real_freeze(*args, **kw)  # type: ignore[arg-type]
        frozen.append(True)
        return done

    def watched(conn: object) -> steps.Counted:
        if conn == cfg.old:
            seen["old"] = (
                bool(frozen),
                old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'")[0][0],
                old.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")[0][0])
        else:
            on_new = {r[0] for r in new.sql("SELECT n FROM writes")}
            seen["new_missing"] = set(writer.acked) - on_new
            seen["writes_on_old"] = len(writer.acked)
        return count(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(steps, "_count", watched)
    monkeypatch.setattr(steps, "freeze", slow_freeze)

    def after(step: str) -> None:
        if step == "dns_switch":
            writer.target = new

    writer.start()
    try:
        while len(writer.acked) < 20:
            writer.stop_event.wait(0.01)
        state = run_cutover(cfg, provider_for(cfg), tmp_path / "state.json", say=print,
                            start_now=True, after_step=after)
    finally:
        writer.stop()
    assert state.complete
    assert seen["old"] == (True, False, 0)  # frozen: NOLOGIN and no app session left
    assert seen["new_missing"] == set() and seen["writes_on_old"] >= 20
    verified = next(r.detail for r in state.steps if r.name == "verify_db")
    assert "counted in the background" in verified and "row counts: 3 equal" in verified
