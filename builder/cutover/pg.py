"""PostgreSQL through libpq's own tools (psql, pg_dump, pg_restore), run by
builder.proc.run. Results come back as CSV rows."""

from __future__ import annotations

import csv
import io
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from builder.cutover.config import Conn
from builder.errors import UserError
from builder.proc import CommandError, run


def ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """Quote an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def query(conn: Conn, sql: str, *, timeout: float | None = 120) -> list[list[str]]:
    """Run `sql` (one statement or a script) and return the rows of its results."""
    proc = _psql(conn, sql, timeout=timeout)
    return [row for row in csv.reader(io.StringIO(proc.stdout)) if row]


def value(conn: Conn, sql: str, *, timeout: float | None = 120) -> str:
    """The first column of the first row ('' when there is none)."""
    rows = query(conn, sql, timeout=timeout)
    return rows[0][0] if rows and rows[0] else ""


def execute(conn: Conn, sql: str, *, timeout: float | None = 600) -> None:
    _psql(conn, sql, timeout=timeout)


def _psql(conn: Conn, sql: str, *, timeout: float | None) -> subprocess.CompletedProcess[str]:
    try:
        return run(
            ["psql", "-X", "-q", "--csv", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql,
            env=conn.env(),
            capture=True,
            timeout=timeout,
        )
    except CommandError as err:
        raise UserError(
            f"{conn}: {_last_error(err.stderr) or err.message}",
            hint="run with --debug for the SQL and psql's full output",
        ) from err


def _last_error(stderr: str) -> str:
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
        return run(list(cmd), env=conn.env(), capture=True, timeout=timeout).stdout
    except CommandError as err:
        raise UserError(
            f"{cmd[0]} ({conn}): {_last_error(err.stderr) or err.message}",
            hint="run with --debug for the full output",
        ) from err


@contextmanager
def passfile(*conns: Conn) -> Iterator[Path]:
    """A temporary ~/.pgpass for commands that talk to several servers at once."""
    with tempfile.TemporaryDirectory(prefix="amibake-pgpass-") as tmp:
        path = Path(tmp) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace(":", "\\:")

        with os.fdopen(fd, "w") as fh:
            for c in conns:
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
                f"{producer[0]} | {consumer[0]}: {_last_error(err.stderr) or err.message}",
                hint="run with --debug for the full output",
            ) from err
