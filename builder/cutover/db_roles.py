"""Roles copied ahead of the window, and the write freeze used by both
strategies: the app role loses LOGIN and its sessions are terminated;
walsenders (the replication connections) are left alone."""

from __future__ import annotations

import re
import time

from builder.cutover import pg
from builder.cutover.config import Conn, CutoverConfig
from builder.cutover.db_dump import old_host_command
from builder.cutover.db_replicate import ROLE as REPLICATION_ROLE
from builder.errors import UserError
from builder.proc import CommandError, run

_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);$')
_ALTER_ROLE = re.compile(r'^ALTER ROLE ("(?:[^"]|"")+"|[^\s;]+) ')
_GRANT_TO = re.compile(r'^GRANT .* TO ("(?:[^"]|"")+"|[^\s;]+)( GRANTED BY .*)?;$')


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def copy_roles(cfg: CutoverConfig) -> str:
    """`pg_dumpall --roles-only` from the old server, applied to the new one.

    Roles that already exist there are altered, not created again, and the
    cutover's own login on the new server is never touched (its password
    may differ), nor is the replication role copied. Idempotent.
    """
    if cfg.strategy == "dump" and cfg.cutover.old_pg_dump != "local":
        # the old host's own pg_dumpall (8.1-9.1 too): --globals-only is what
        # every version has (--roles-only is 8.3+); its tablespaces stay there
        cmd, stdin = old_host_command(cfg, "pg_dumpall", "--globals-only")
        try:
            out = run(cmd, input=stdin.decode(), capture=True, timeout=120).stdout
        except CommandError as err:
            raise UserError(f"the old host's pg_dumpall failed: {pg.last_error(err.stderr)}",
                            hint="check cutover.old_pg_dump and its SSH access") from err
        script = "\n".join(ln for ln in out.splitlines() if not ln.startswith(
            ("CREATE TABLESPACE", "ALTER TABLESPACE", "\\")))
    else:
        script = pg.tool(
            ["pg_dumpall", "--roles-only", "-l", cfg.old.dbname], cfg.old, timeout=120)
    existing = {r[0] for r in pg.query(cfg.new, "SELECT rolname FROM pg_roles")}
    keep: list[str] = []
    copied: list[str] = []
    for line in script.splitlines():
        m = _CREATE_ROLE.match(line)
        if m:
            role = _unquote(m.group(1))
            if role in existing or role in (cfg.new.user, REPLICATION_ROLE):
                continue
            copied.append(role)
        m = _ALTER_ROLE.match(line)
        if m and _unquote(m.group(1)) in (cfg.new.user, cfg.old.user, REPLICATION_ROLE):
            continue
        m = _GRANT_TO.match(line)
        if m and _unquote(m.group(1)) == REPLICATION_ROLE:
            continue  # the cutover's own replication login stays on the old server
        keep.append(line)
    # the app role may not log in to the new server until the switch (detach
    # or restore gives LOGIN back): an app server started early on the new
    # stack would write there while replication still applies
    keep.append(f"ALTER ROLE {pg.ident(cfg.app_user)} NOLOGIN;")
    pg.run_script(cfg.new, "\n".join(keep) + "\n")
    return (f"created {len(copied)} role(s)" + (f": {', '.join(sorted(copied))}" if copied else "")
            + f"; {cfg.app_user} NOLOGIN on the new server until the switch")


def freeze(cfg: CutoverConfig, *, timeout: float = 30.0) -> tuple[str, list[list[object]]]:
    """Refuse the app's writes on the old server; return its final WAL position
    and sequence values once no app session is left."""
    role = pg.ident(cfg.app_user)
    user = pg.literal(cfg.old, cfg.app_user)
    # committed on its own: from here no new app session is admitted
    pg.execute(cfg.old, f"ALTER ROLE {role} NOLOGIN")
    version = pg.version_num(cfg.old)
    if version < 100000:
        return _freeze_before_10(cfg.old, version, user, timeout)
    # then one round trip: end the sessions, read the final position (where
    # WAL insertion stands: past every commit, an asynchronous one too), and
    # flush it (the transaction has an xid and commits synchronously): the
    # old server's WAL sender can decode up to it at once, not when the WAL
    # writer gets to it (the ended sessions' aborts are not flushed)
    rows = pg.query(cfg.old, f"""
        SET LOCAL synchronous_commit = on;
        DO $$
        DECLARE deadline timestamptz := clock_timestamp() + interval '{float(timeout)} s';
        BEGIN
          LOOP
            PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND usename = {user};
            PERFORM pg_stat_clear_snapshot();  -- activity is cached per transaction
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND usename = {user});
            IF clock_timestamp() > deadline THEN
              RAISE EXCEPTION 'sessions of % survived termination', {user};
            END IF;
            PERFORM pg_sleep(0.005);
          END LOOP;
          PERFORM txid_current();
        END $$;
        SELECT 'lsn', pg_current_wal_insert_lsn()::text, NULL;
        SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2;
    """, timeout=timeout + 30)
    lsn = rows[0][1]
    sequences: list[list[object]] = [[s, n, int(v) if v else None] for s, n, v in rows[1:]]
    return lsn, sequences


def _freeze_before_10(conn: Conn, version: int, user: str,
                      timeout: float) -> tuple[str, list[list[object]]]:
    """The freeze in the SQL of PostgreSQL 8.1-9.6 (only `dump` moves them):
    no backend_type, pg_stat_activity's pid was procpid before 9.2, no DO
    before 9.0, pg_terminate_backend from 8.4, xlog before it was WAL, no
    pg_sequences (each sequence is read itself)."""
    pid = "pid" if version >= 90200 else "procpid"
    end = "pg_terminate_backend" if version >= 80400 else "pg_cancel_backend"
    deadline = time.monotonic() + timeout
    while True:
        left = pg.value(conn, f"""
            SELECT count({end}({pid})) FROM pg_stat_activity
             WHERE usename = {user} AND {pid} <> pg_backend_pid()""")
        if left in ("", "0"):
            break
        if time.monotonic() > deadline:
            raise UserError(
                f"sessions of {user} survived {end} on PostgreSQL {version}",
                hint="stop the app servers on the old site, then run again"
                + ("" if version >= 80400 else " (pg_terminate_backend is 8.4+)"))
        time.sleep(0.005)
    lsn = pg.value(conn, "SELECT pg_current_xlog_location()") if version >= 80200 else ""
    seqs = pg.query(conn, """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'S' ORDER BY 1, 2""")
    sequences: list[list[object]] = []
    if seqs:
        rows = pg.query(conn, " UNION ALL ".join(
            f"SELECT {pg.literal(conn, s)}, {pg.literal(conn, n)}, "
            f"CASE WHEN is_called THEN last_value END FROM {pg.ident(s)}.{pg.ident(n)}"
            for s, n in seqs) + " ORDER BY 1, 2")
        sequences = [[s, n, int(v) if v else None] for s, n, v in rows]
    return lsn, sequences


def set_login(conn: Conn, app_user: str, login: bool) -> None:
    """ALTER ROLE … LOGIN / NOLOGIN (idempotent)."""
    exists = pg.value(conn, f"SELECT 1 FROM pg_roles WHERE rolname = {pg.literal(conn, app_user)}")
    if exists:
        pg.execute(conn, f"ALTER ROLE {pg.ident(app_user)} {'LOGIN' if login else 'NOLOGIN'}")


def set_sequences(conn: Conn, sequences: list[list[object]]) -> int:
    """setval each sequence on `conn` to the value recorded on the old server."""
    stmts = [
        f"SELECT setval({pg.literal(conn, pg.ident(str(s)) + '.' + pg.ident(str(n)))}::regclass, "
        f"{v}, true);"
        for s, n, v in sequences if v is not None
    ]
    if stmts:
        pg.execute(conn, "\n".join(stmts))
    return len(stmts)
