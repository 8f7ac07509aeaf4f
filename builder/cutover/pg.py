"""PostgreSQL: SQL over a libpq session kept per server (psycopg; the window
is counted in milliseconds, a psql process per statement costs 50-100 ms on
a busy machine), scripts with psql meta-commands through psql, and libpq's
own tools (pg_dump, pg_restore, pg_dumpall) run by builder.proc.run.
Results are rows of strings as psql prints them ('t'/'f', '' for NULL).

Passwords reach the tools only through a passfile created 0600 in a private
temporary directory and removed when the tool ends (PGPASSFILE), never
through PGPASSWORD or the command line."""

from __future__ import annotations

import csv
import io
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.types.string import StrDumper, TextLoader

from builder.atomic import open_private
from builder.cutover.config import Conn
from builder.errors import UserError
from builder.proc import CommandError, run


def ident(name: str) -> str:
    """An SQL identifier, quoted by psycopg's `sql.Identifier` (libpq's rules)."""
    return sql.Identifier(name).as_string(None)


def literal(conn: Conn, value: str) -> str:
    """An SQL string literal for `conn`'s server, quoted by libpq on that
    server's own session (PQescapeLiteral through psycopg's `sql.Literal`):
    it follows the server's standard_conforming_strings, off by default on
    PostgreSQL 8.x-9.0, where a backslash inside '...' is an escape (a value
    with one is written E'...' with the backslash doubled)."""
    return sql.Literal(value).as_string(_session(conn))


@dataclass(frozen=True)
class ServerFacts:
    """What the cutover needs to know of a server before choosing how to
    move its data: read once per pre-flight, never trusted beyond its type."""

    version_num: int  # libpq's PQserverVersion: 150004, 100023, 90624, 80123
    version: str  # server_version as the server reports it
    standard_conforming_strings: bool
    encoding: str
    wal_level: str  # '' before 9.0
    max_replication_slots: int  # 0 before 9.4
    max_wal_senders: int

    @property
    def major(self) -> str:
        """'15', '10', '9.6', '8.1' (two-part majors before 10)."""
        v = self.version_num
        return str(v // 10000) if v >= 100000 else f"{v // 10000}.{v // 100 % 100}"


def version_num(conn: Conn) -> int:
    """The server's version as libpq reports it (150004, 90624, 80123)."""
    return int(_session(conn).info.server_version)


def server_facts(conn: Conn) -> ServerFacts:
    """Version and settings of `conn`'s server. The version comes from the
    connection's start-up (every server since 7.4 reports it; the
    server_version_num setting exists only from 8.2); pg_settings exists on
    every version the cutover can move (8.1+)."""
    info = _session(conn).info
    rows = dict((r[0], r[1]) for r in query(conn, """
        SELECT name, setting FROM pg_settings WHERE name IN (
          'standard_conforming_strings', 'server_encoding', 'wal_level',
          'max_replication_slots', 'max_wal_senders')"""))

    def number(name: str) -> int:
        text = rows.get(name, "")
        return int(text) if text.isdigit() else 0

    return ServerFacts(
        version_num=version_num(conn),
        version=info.parameter_status("server_version") or "",
        standard_conforming_strings=rows.get("standard_conforming_strings") == "on",
        encoding=rows.get("server_encoding", ""),
        wal_level=rows.get("wal_level", ""),
        max_replication_slots=number("max_replication_slots"),
        max_wal_senders=number("max_wal_senders"),
    )


_TEXT = AdaptersMap()
_TEXT.register_loader(0, TextLoader)  # every type comes back as its text form
_TEXT.register_dumper(str, StrDumper)  # sql.Literal: quoted by the session's libpq
_local = threading.local()


def _sessions() -> dict[Conn, psycopg.Connection[tuple[object, ...]]]:
    if not hasattr(_local, "sessions"):
        _local.sessions = {}
    return _local.sessions  # type: ignore[no-any-return]


def _connect(conn: Conn) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(conn.conninfo(), autocommit=True, connect_timeout=5,
                           application_name="amibake-cutover", context=_TEXT)


def _session(conn: Conn) -> psycopg.Connection[tuple[object, ...]]:
    """This thread's session with `conn`, opened if need be."""
    session = _sessions().get(conn)
    if session is None or session.closed:
        value(conn, "SELECT 1")
        session = _sessions()[conn]
    return session


def scram_verifier(conn: Conn, role: str, password: str) -> str:
    """`password` as a SCRAM-SHA-256 verifier for `role`, computed here by
    libpq (PQencryptPasswordConn): for CREATE/ALTER ROLE … PASSWORD, so the
    password itself never reaches the server, its logs or pg_stat_activity."""
    verifier = _session(conn).pgconn.encrypt_password(
        password.encode(), role.encode(), b"scram-sha-256")
    return verifier.decode()


def close_sessions() -> None:
    """Close this thread's sessions (the end of a run)."""
    for c in _sessions().values():
        c.close()
    _sessions().clear()


def _session_query(conn: Conn, sql: str) -> list[list[str]]:
    sessions = _sessions()
    for attempt in (0, 1):
        reused = conn in sessions
        try:
            if not reused:
                sessions[conn] = _connect(conn)
            cur = sessions[conn].execute(sql.encode())
            rows: list[list[str]] = []
            while True:
                if cur.description is not None:
                    rows += [["" if v is None else str(v) for v in r] for r in cur.fetchall()]
                if not cur.nextset():
                    return rows
        except psycopg.OperationalError as exc:
            stale = sessions.pop(conn, None)
            if stale is not None:
                stale.close()
            if reused and attempt == 0:
                continue  # the server went away since: one fresh connection
            raise UserError(f"{conn}: {_first_line(exc)}",
                            hint="check the address, pg_hba.conf and the password") from exc
        except psycopg.Error as exc:
            raise UserError(f"{conn}: {_first_line(exc)}",
                            hint="run with --debug for the SQL") from exc
    raise AssertionError("unreachable")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def query(conn: Conn, sql: str, *, timeout: float | None = 120) -> list[list[str]]:
    """Run `sql` (one statement or a script) and return the rows of its results."""
    if any(line.lstrip().startswith("\\") for line in sql.splitlines()):
        proc = _psql(conn, sql, timeout=timeout)  # psql meta-commands (pg_dump output)
        return [row for row in csv.reader(io.StringIO(proc.stdout)) if row]
    return _session_query(conn, sql)


def value(conn: Conn, sql: str, *, timeout: float | None = 120) -> str:
    """The first column of the first row ('' when there is none)."""
    rows = query(conn, sql, timeout=timeout)
    return rows[0][0] if rows and rows[0] else ""


def execute(conn: Conn, sql: str, *, timeout: float | None = 600) -> None:
    query(conn, sql, timeout=timeout)


def run_script(conn: Conn, sql: str, *, timeout: float | None = 3600) -> None:
    """A dump's SQL (pg_dump, pg_dumpall) through psql in its own session:
    it may hold meta-commands and sets search_path for itself."""
    _psql(conn, sql, timeout=timeout)


def _psql(conn: Conn, sql: str, *, timeout: float | None) -> subprocess.CompletedProcess[str]:
    try:
        with passfile(conn) as pf:
            return run(
                ["psql", "-X", "-q", "--csv", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                input=sql,
                env={**conn.env(), "PGPASSFILE": str(pf)},
                capture=True,
                timeout=timeout,
            )
    except CommandError as err:
        raise UserError(
            f"{conn}: {last_error(err.stderr) or err.message}",
            hint="run with --debug for the SQL and psql's full output",
        ) from err


def last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "FATAL" in ln or "error" in ln]
    return (errors or lines or [""])[-1]


def reachable(conn: Conn) -> bool:
    try:
        return value(conn, "SELECT 1", timeout=10) == "1"
    except UserError:
        return False


def tool(cmd: Sequence[str], conn: Conn, *, timeout: float | None = None) -> str:
    """Run pg_dump / pg_restore / pg_dumpall against `conn`; return stdout."""
    try:
        with passfile(conn) as pf:
            return run(list(cmd), env={**conn.env(), "PGPASSFILE": str(pf)}, capture=True,
                       timeout=timeout).stdout
    except CommandError as err:
        raise UserError(
            f"{cmd[0]} ({conn}): {last_error(err.stderr) or err.message}",
            hint="run with --debug for the full output",
        ) from err


@contextmanager
def passfile(*conns: Conn) -> Iterator[Path]:
    """A temporary ~/.pgpass for `conns` (0600, in a 0700 directory), removed after."""
    with tempfile.TemporaryDirectory(prefix="amibake-pgpass-") as tmp:
        path = Path(tmp) / "pgpass"
        fd = open_private(path)

        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace(":", "\\:")

        with os.fdopen(fd, "w") as fh:
            for c in conns:
                if c.password is not None and ("\n" in c.password or "\r" in c.password):
                    raise UserError(f"{c}: the password holds a line break, which libpq's "
                                    "passfile cannot carry", hint="choose another password")
                if c.password is not None:
                    fh.write(f"{esc(c.host)}:{c.port}:*:{esc(c.user)}:{esc(c.password)}\n")
        yield path


def pipeline(producer: Sequence[str], consumer: Sequence[str], *conns: Conn,
             timeout: float | None = None) -> None:
    """`producer | consumer` with pipefail; passwords through a temp passfile."""
    script = f"set -o pipefail; {shlex.join(producer)} | {shlex.join(consumer)}"
    with passfile(*conns) as pf:
        try:
            run(["bash", "-c", script], env={"PGPASSFILE": str(pf), "PGCONNECT_TIMEOUT": "5"},
                capture=True, timeout=timeout)
        except CommandError as err:
            raise UserError(
                f"{producer[0]} | {consumer[0]}: {last_error(err.stderr) or err.message}",
                hint="run with --debug for the full output",
            ) from err


def drop_partitioned_tables(conn: Conn) -> int:
    """Drop the top-level partitioned tables (with their partitions) of the
    TARGET database before a schema is re-applied there with `--clean
    --if-exists`: PostgreSQL cannot drop a partition's inherited primary key
    (`cannot drop inherited constraint`), so a retry over a database that
    already holds one would fail; gone first, the script's own IF EXISTS
    drops skip them. Never called on the old server."""
    names = [r[0] for r in query(conn, """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'p' AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')""")]
    if names:
        execute(conn, f"DROP TABLE IF EXISTS {', '.join(names)} CASCADE")
    return len(names)


def drop_foreign_keys(conn: Conn, tables: set[str]) -> int:
    """Drop the foreign keys of `tables` (schema.table as format('%I.%I')
    writes it) in the TARGET database before its schema is re-applied
    section by section (`dump_format: copy`): pre-data's `--clean` drops
    tables, not the post-data foreign keys of a previous attempt, and a
    table another one references cannot be dropped. A foreign key of any
    other table is left alone (and still stops the drop, as with the other
    formats). Never called on the old server."""
    rows = query(conn, """
        SELECT format('%I.%I', n.nspname, t.relname),
               format('ALTER TABLE %s DROP CONSTRAINT %I;', c.conrelid::regclass, c.conname)
          FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
          JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE c.contype = 'f' AND c.conparentid = 0""")
    drops = [r[1] for r in rows if r[0] in tables]
    if drops:
        execute(conn, "".join(drops))
    return len(drops)
