"""Strategy `replicate`: logical replication set up before the window; in the
window only the tail of the WAL has to arrive.

The subscription does not log in as the cutover's superuser: the old server
gets a role of its own (ROLE: LOGIN REPLICATION, member of pg_read_all_data
for the initial copy) with a random password made for this cutover, set as
a SCRAM verifier computed here. Only that one-time password is stored in the
new server's pg_subscription, and the role is dropped with the slot and the
publication when replication ends (detach, rollback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from builder.cutover import pg, verify
from builder.cutover.config import Conn, CutoverConfig
from builder.errors import UserError
from builder.wait import NotYet, Waiter, WaitTimeout, wait_for

NAME = "amibake_cutover"  # publication, subscription and slot
ROLE = "amibake_cutover_repl"  # the subscription's login on the old server


def subscription_exists(cfg: CutoverConfig) -> bool:
    return bool(pg.value(cfg.new, f"SELECT 1 FROM pg_subscription WHERE subname = '{NAME}'"))


def copy_schema(cfg: CutoverConfig) -> None:
    """pg_dump --schema-only from the old server, applied with --clean (the new
    database holds nothing of value before the subscription exists)."""
    with tempfile.TemporaryDirectory(prefix="amibake-schema-") as tmp:
        path = Path(tmp) / "schema.sql"
        pg.tool(["pg_dump", "--schema-only", "--clean", "--if-exists", "--no-publications",
                 "--no-subscriptions", "-f", str(path)], cfg.old, timeout=600)
        pg.drop_partitioned_tables(cfg.new)  # a retry after rollback: see there
        pg.run_script(cfg.new, path.read_text())


def replication_login(cfg: CutoverConfig) -> Conn:
    """(Re)create ROLE on the old server with a fresh random password; the
    publisher connection the subscription uses, logging in as it."""
    password = secrets.token_urlsafe(32)
    verifier = pg.literal(cfg.old, pg.scram_verifier(cfg.old, ROLE, password))
    pg.execute(cfg.old, f"""
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            ALTER ROLE {ROLE} WITH LOGIN REPLICATION NOSUPERUSER PASSWORD {verifier};
          ELSE
            CREATE ROLE {ROLE} WITH LOGIN REPLICATION NOSUPERUSER PASSWORD {verifier};
          END IF;
        END $$;""")
    if pg.version_num(cfg.old) >= 140000:
        pg.execute(cfg.old, f"GRANT pg_read_all_data TO {ROLE}")
    else:  # no pg_read_all_data before 14: each schema's tables (dropped with DROP OWNED)
        schemas = [pg.ident(r[0]) for r in pg.query(cfg.old, """
            SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('information_schema')
               AND nspname NOT LIKE 'pg\\_%'""")]
        pg.execute(cfg.old, "\n".join(
            f"GRANT USAGE ON SCHEMA {s} TO {ROLE}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} "
            f"TO {ROLE};" for s in schemas))
    return dataclasses.replace(cfg.publisher, user=ROLE, password=password)


def setup(cfg: CutoverConfig, say: Callable[[str], None], *, timeout: float = 3600) -> str:
    """Schema, publication, subscription, and the initial copy: idempotent."""
    if not subscription_exists(cfg):
        copy_schema(cfg)
        if not pg.value(cfg.old, f"SELECT 1 FROM pg_publication WHERE pubname = '{NAME}'"):
            pg.execute(cfg.old, f"CREATE PUBLICATION {NAME} FOR ALL TABLES")
        # a slot left by a run that died between creating it and recording the
        # subscription would make CREATE SUBSCRIPTION fail: drop it if idle
        pg.execute(cfg.old, f"""
            SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = '{NAME}' AND NOT active""")
        conninfo = pg.literal(cfg.new, replication_login(cfg).conninfo())
        pg.execute(cfg.new, f"CREATE SUBSCRIPTION {NAME} CONNECTION {conninfo} "
                            f"PUBLICATION {NAME}")
    say("waiting for the initial copy of every table")

    def copied() -> None:
        left = int(pg.value(cfg.new, (
            "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s "
            f"ON s.oid = r.srsubid WHERE s.subname = '{NAME}' AND r.srsubstate NOT IN ('r', 's')"
        )) or 0)
        streaming = pg.value(cfg.new, (
            f"SELECT count(*) FROM pg_stat_subscription WHERE subname = '{NAME}' "
            "AND pid IS NOT NULL AND relid IS NULL"))
        if left or streaming != "1":
            raise NotYet(f"{left} table(s) left to copy" if left else "not streaming yet")

    interval = 0.2
    try:
        wait_for(copied, Waiter("the initial copy of every table", interval=interval,
                                attempts=int(timeout / interval) + 1, timeout=timeout))
    except WaitTimeout as exc:
        raise UserError(f"initial sync not finished after {timeout:g} s ({exc.reason})",
                        hint="run again to keep waiting; the copy goes on meanwhile") from None
    tables = pg.value(cfg.new, (
        "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s "
        f"ON s.oid = r.srsubid WHERE s.subname = '{NAME}'"))
    # the copied tables have no statistics and no visibility map yet: give
    # them both now, before the window (plans on the new server; the row-count
    # gate in the window can then use index-only scans)
    pg.execute(cfg.new, "VACUUM (ANALYZE)", timeout=timeout)
    return f"subscription {NAME} streaming; {tables} table(s) copied, vacuumed and analyzed"


def vacuum_both(cfg: CutoverConfig, *, timeout: float) -> str:
    """VACUUM the database on both servers at once, as the window opens: the
    gate's row counts then read the primary keys' indexes alone (index-only
    scans need pages marked all-visible, and the writes since the last
    vacuum, on the old server, and the apply since the initial copy, on the
    new one, cleared those marks). Measured on PostgreSQL 10 at 1 GB after
    two minutes of pgbench: the count 0.40 s before, 0.23 s after a 0.9 s
    VACUUM. It blocks no reads or writes. The old server's VACUUM writes
    WAL its WAL sender must read through: the step ends once the subscriber
    is past it, so that the window opens with the replica caught up."""
    start = time.monotonic()
    verify.both(lambda conn: pg.execute(conn, "VACUUM", timeout=None), cfg.old, cfg.new)
    vacuumed = time.monotonic() - start
    lsn = pg.value(cfg.old, "SELECT pg_current_wal_insert_lsn()")
    wait_caught_up(cfg, lsn, timeout=timeout)
    return (f"both databases vacuumed in {vacuumed:.1f} s; the subscriber past the old "
            f"server's {lsn} {time.monotonic() - start - vacuumed:.2f} s later")


def mark_past(cfg: CutoverConfig) -> None:
    """A transaction on the old server after the position waited for, which
    its WAL sender sends on at once: a transactional logical decoding
    message. The freeze's own transaction changed nothing, so nothing of it
    is sent; without this the subscriber learns it has everything only from
    the old server's next keepalive (0.15 s at the bench's 1 GB). A
    publisher from PostgreSQL 15 on skips it too (an empty transaction for
    pgoutput): then the keepalive it is. Failing (no privilege) is no
    error: the wait goes on without it."""
    with contextlib.suppress(UserError):
        pg.execute(cfg.old, f"SELECT pg_logical_emit_message(true, '{NAME}', 'past')")


def wait_caught_up(cfg: CutoverConfig, final_lsn: str, *, timeout: float,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> str:
    """Until the new server has applied every transaction committed on the old
    one before the freeze, then flushed them to its disk.

    Watched on the subscriber, over the session the window already holds
    (no new connection). The apply worker handles the old server's messages
    in order, each in full before it reads the next, and the old server
    sends transactions in commit order: once a message past `final_lsn` has
    arrived (pg_stat_subscription.received_lsn: the freeze's own transaction,
    which a publisher before 15 sends even though it changed nothing), or a
    keepalive saying everything up to `final_lsn` was sent has been handled
    (latest_end_lsn), every transaction committed before it is committed on
    the new server. The subscription commits asynchronously (its default: the
    apply keeps up with the load), so pg_replication_origin_progress(...,
    flush => true) then flushes the new server's WAL up to the last applied
    commit: no write the old server acknowledged can be lost in a crash of
    the new one from here on. The old server's slot confirms the same only
    once the apply worker's lazy feedback reports it (up to a second later):
    it is consulted every quarter second, as the fallback."""
    start = clock()
    mark_past(cfg)
    lsn = pg.literal(cfg.new, final_lsn)
    sql = (f"SELECT s.received_lsn > {lsn}::pg_lsn OR s.latest_end_lsn >= {lsn}::pg_lsn, "
           "s.pid IS NOT NULL "
           f"FROM pg_stat_subscription s WHERE s.subname = '{NAME}' AND s.relid IS NULL")
    interval = 0.002  # a round trip on a held session every few ms: this wait is in the window
    checked_slot = [start]

    def confirmed_by_slot() -> bool:
        """The old server's slot (its WAL sender's view), or unreachable."""
        checked_slot[0] = clock()
        try:
            return pg.value(cfg.old, (
                f"SELECT confirmed_flush_lsn >= {pg.literal(cfg.old, final_lsn)}::pg_lsn "
                f"FROM pg_replication_slots WHERE slot_name = '{NAME}'"), timeout=10) == "t"
        except UserError as exc:
            raise UserError(
                f"the old server is unreachable before the subscriber reached {final_lsn}: "
                f"{exc}",
                hint="start it again and re-run (the run resumes here), or `cutover rollback`",
            ) from None

    def applied() -> None:
        rows = pg.query(cfg.new, sql)
        if not rows:
            raise UserError(f"subscription {NAME} is missing on the new server",
                            hint="`amibake cutover rollback`, then run the cutover again")
        reached, running = rows[0]
        if reached == "t":
            return
        if (running != "t" or clock() - checked_slot[0] >= 0.25) and confirmed_by_slot():
            # no apply worker (the old server may be gone), or a while
            # without a keepalive past the position: the slot confirmed it
            return
        raise NotYet(f"the subscriber has not applied {final_lsn}")

    try:
        wait_for(applied, Waiter(f"the subscriber to reach {final_lsn}", interval=interval,
                                 timeout=timeout, attempts=int(timeout / interval) + 1),
                 clock=clock, sleep=sleep)
    except WaitTimeout:
        raise UserError(f"the subscriber did not reach {final_lsn} within {timeout:g} s",
                        hint="run again to keep waiting, or `cutover rollback`") from None
    applied_lsn = pg.value(cfg.new, f"""
        SELECT pg_replication_origin_progress('pg_' || oid, true) FROM pg_subscription
         WHERE subname = '{NAME}'""")
    return (f"caught up to {final_lsn} in {clock() - start:.3f} s (last applied commit "
            f"{applied_lsn or 'none'}, flushed on the new server)")


def refresh_materialized_views(conn: Conn) -> int:
    """Logical replication copies no materialized view's data (the schema
    copy leaves them unpopulated): refresh each, in creation order (a view
    built on another comes after it)."""
    names = [r[0] for r in pg.query(conn, """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'm' ORDER BY c.oid""")]
    if names:
        pg.execute(conn, "\n".join(f"REFRESH MATERIALIZED VIEW {n};" for n in names),
                   timeout=3600)
    return len(names)


LEFT_ON_OLD = [f"publication:{NAME}", f"slot:{NAME}", f"role:{ROLE}"]


def drop_subscription_locally(cfg: CutoverConfig, *, then: str = "") -> list[str]:
    """The window's detach: the subscription dropped on the new server alone
    (DISABLE, slot_name = NONE, DROP: its apply worker is stopped, nothing
    more can arrive from the old server), with `then` (more SQL for the new
    server), in one round trip and one transaction. The old server is not
    contacted: its slot, publication and replication role are what is
    returned, dropped by `cleanup_old` after the DNS switch."""
    pg.execute(cfg.new, f"""
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM pg_subscription WHERE subname = '{NAME}') THEN
            ALTER SUBSCRIPTION {NAME} DISABLE;
            ALTER SUBSCRIPTION {NAME} SET (slot_name = NONE);
          END IF;
        END $$;
        DROP SUBSCRIPTION IF EXISTS {NAME};
        {then}""")
    return list(LEFT_ON_OLD)


def detach(cfg: CutoverConfig, *, then: str = "") -> list[str]:
    """Drop subscription, publication and slot (`then`: more SQL for the new
    server, same round trip). When the old server is down: DISABLE,
    slot_name = NONE, DROP; return what is left to drop on it."""
    try:
        # DROP SUBSCRIPTION drops the slot on the publisher too
        pg.execute(cfg.new, f"DROP SUBSCRIPTION IF EXISTS {NAME}")
    except UserError as exc:
        if "could not connect to publisher" not in str(exc) or pg.reachable(cfg.old):
            raise
    else:
        if then:
            pg.execute(cfg.new, then)
        try:
            return cleanup_old(cfg)
        except UserError:
            if pg.reachable(cfg.old):
                raise
            return list(LEFT_ON_OLD)
    return drop_subscription_locally(cfg, then=then)


def cleanup_old(cfg: CutoverConfig) -> list[str]:
    """Drop our slot, publication and replication role on the old server
    (ending the role's sessions first, and waiting up to 10 s for the slot's
    WAL sender to exit); what is left there."""
    wait = ", 5000" if pg.version_num(cfg.old) >= 140000 else ""  # the timeout: 14+
    pg.execute(cfg.old, f"""
        SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity
         WHERE usename = '{ROLE}' AND pid <> pg_backend_pid()""")

    def released() -> None:
        if pg.value(cfg.old, "SELECT active FROM pg_replication_slots "
                             f"WHERE slot_name = '{NAME}'") == "t":
            raise NotYet(f"slot {NAME} is still in use")

    with contextlib.suppress(WaitTimeout):  # still in use: named below as left there
        wait_for(released, Waiter(f"slot {NAME} released", interval=0.01, attempts=1000,
                                  timeout=10))
    left = pg.query(cfg.old, f"""
        SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
         WHERE slot_name = '{NAME}' AND NOT active;
        DROP PUBLICATION IF EXISTS {NAME};
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
            DROP OWNED BY {ROLE};
            DROP ROLE {ROLE};
          END IF;
        END $$;
        SELECT 'slot:' || slot_name FROM pg_replication_slots WHERE slot_name = '{NAME}';""")
    return [r[0] for r in left if r and r[0].startswith("slot:")]
