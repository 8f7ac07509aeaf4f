"""Strategy `replicate`: logical replication set up before the window; in the
window only the tail of the WAL has to arrive."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from builder.cutover import pg
from builder.cutover.config import CutoverConfig
from builder.errors import UserError

NAME = "amibake_cutover"  # publication, subscription and slot


def subscription_exists(cfg: CutoverConfig) -> bool:
    return bool(pg.value(cfg.new, f"SELECT 1 FROM pg_subscription WHERE subname = '{NAME}'"))


def copy_schema(cfg: CutoverConfig) -> None:
    """pg_dump --schema-only from the old server, applied with --clean (the new
    database holds nothing of value before the subscription exists)."""
    with tempfile.TemporaryDirectory(prefix="amibake-schema-") as tmp:
        path = Path(tmp) / "schema.sql"
        pg.tool(["pg_dump", "--schema-only", "--clean", "--if-exists", "--no-publications",
                 "--no-subscriptions", "-f", str(path)], cfg.old, timeout=600)
        pg.run_script(cfg.new, path.read_text())


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
        conninfo = cfg.publisher.conninfo()
        pg.execute(cfg.new, f"CREATE SUBSCRIPTION {NAME} CONNECTION {pg.literal(conninfo)} "
                            f"PUBLICATION {NAME}")
    say("waiting for the initial copy of every table")
    deadline = time.monotonic() + timeout
    while True:
        left = int(pg.value(cfg.new, (
            "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s "
            f"ON s.oid = r.srsubid WHERE s.subname = '{NAME}' AND r.srsubstate NOT IN ('r', 's')"
        )) or 0)
        streaming = pg.value(cfg.new, (
            f"SELECT count(*) FROM pg_stat_subscription WHERE subname = '{NAME}' "
            "AND pid IS NOT NULL AND relid IS NULL"))
        if left == 0 and streaming == "1":
            break
        if time.monotonic() > deadline:
            raise UserError(f"initial sync not finished after {timeout:g} s ({left} tables left)")
        time.sleep(0.2)
    tables = pg.value(cfg.new, (
        "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s "
        f"ON s.oid = r.srsubid WHERE s.subname = '{NAME}'"))
    # the copied tables have no statistics and no visibility map yet: give
    # them both now, before the window (plans on the new server; the row-count
    # gate in the window can then use index-only scans)
    pg.execute(cfg.new, "VACUUM (ANALYZE)", timeout=timeout)
    return f"subscription {NAME} streaming; {tables} table(s) copied, vacuumed and analyzed"


def wait_caught_up(cfg: CutoverConfig, final_lsn: str, *, timeout: float) -> str:
    """Until the slot on the old server confirms `final_lsn` (the subscriber
    applied and flushed everything committed before the freeze)."""
    start = time.monotonic()
    deadline = start + timeout
    sql = (f"SELECT confirmed_flush_lsn >= {pg.literal(final_lsn)}::pg_lsn "
           f"FROM pg_replication_slots WHERE slot_name = '{NAME}'")
    try:
        # one connection polled every few ms: this wait is inside the window
        with psycopg.connect(cfg.old.conninfo(), autocommit=True, connect_timeout=10,
                             application_name="amibake-cutover") as conn:
            while True:
                row = conn.execute(sql.encode()).fetchone()
                if row is None:
                    raise UserError(f"replication slot {NAME} is missing on the old server")
                if row[0]:
                    return f"caught up to {final_lsn} in {time.monotonic() - start:.2f} s"
                if time.monotonic() > deadline:
                    raise UserError(f"the subscriber did not reach {final_lsn} within {timeout} s")
                time.sleep(0.005)
    except psycopg.Error as exc:
        raise UserError(
            f"the old server is unreachable before the subscriber confirmed {final_lsn}: "
            f"{str(exc).strip()}",
            hint="start it again and re-run (the run resumes here), or `cutover rollback`",
        ) from exc


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
            return [f"publication:{NAME}", f"slot:{NAME}"]
    pg.execute(cfg.new, f"""
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM pg_subscription WHERE subname = '{NAME}') THEN
            ALTER SUBSCRIPTION {NAME} DISABLE;
            ALTER SUBSCRIPTION {NAME} SET (slot_name = NONE);
          END IF;
        END $$""")
    pg.execute(cfg.new, f"DROP SUBSCRIPTION IF EXISTS {NAME}")  # not in a transaction block
    if then:
        pg.execute(cfg.new, then)
    return [f"publication:{NAME}", f"slot:{NAME}"]


def cleanup_old(cfg: CutoverConfig) -> list[str]:
    """Drop our slot and publication on the old server; what is left there."""
    left = pg.query(cfg.old, f"""
        SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
         WHERE slot_name = '{NAME}' AND NOT active;
        DROP PUBLICATION IF EXISTS {NAME};
        SELECT 'slot:' || slot_name FROM pg_replication_slots WHERE slot_name = '{NAME}';""")
    return [r[0] for r in left if r and r[0].startswith("slot:")]
