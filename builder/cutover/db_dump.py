"""Strategy `dump`: the seed's method, improved — amibake's own table-by-table
COPY (builder.cutover.db_copy), a parallel directory-format dump restored in
parallel, or one stream with no file in between; from
PostgreSQL 8.1-9.1 (which this machine's pg_dump cannot read), the old
host's own pg_dump over SSH, its plain SQL rewritten for 15 as it streams
(builder.cutover.dump_sql) into psql in one transaction."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from builder.cutover import db_copy, dump_sql, pg
from builder.cutover.config import Conn, CutoverConfig
from builder.errors import UserError
from builder.manifest.paths import HOST_SPEC
from builder.manifest.ssh_options import ssh_options_problem

_DUMP_FLAGS = ["--no-publications", "--no-subscriptions"]
_RESTORE_FLAGS = ["--clean", "--if-exists", "--exit-on-error"]


def dump_restore(cfg: CutoverConfig, *, workdir: Path | None = None,
                 snapshot: str | None = None) -> str:
    """Copy the frozen old database onto the new one (idempotent: --clean).
    `snapshot`: an exported snapshot to dump (a rehearsal's, not frozen)."""
    cut = cfg.cutover
    if cut.old_pg_dump != "local":
        return _from_old_host(cfg)
    if cut.dump_format == "copy":
        return db_copy.copy_database(cfg, workdir=workdir, snapshot=snapshot).summary()
    dump_flags = [*_DUMP_FLAGS, *([f"--snapshot={snapshot}"] if snapshot else [])]
    pg.drop_partitioned_tables(cfg.new)  # --clean cannot (a resume, a retry after rollback)
    if cut.dump_format == "stream":
        pg.pipeline(
            ["pg_dump", "-Fc", "-Z", "0", *dump_flags, "-d", cfg.old.conninfo(with_password=False)],
            ["pg_restore", *_RESTORE_FLAGS, "-d", cfg.new.conninfo(with_password=False)],
            cfg.old, cfg.new, timeout=24 * 3600,
        )
        return "streamed pg_dump -Fc -Z 0 | pg_restore"
    tmp = Path(tempfile.mkdtemp(prefix="amibake-dump-", dir=workdir))
    try:
        out = tmp / "dump"
        jobs = str(max(1, cut.dump_jobs))
        # -Z 0: the directory lives only for this window, on this machine;
        # gzip in pg_dump's workers was most of the window's CPU (a 1 GB
        # database: dump_restore 51-53 s compressed)
        pg.tool(["pg_dump", "-Fd", "-Z", "0", "-j", jobs, *dump_flags, "-f", str(out)],
                cfg.old, timeout=24 * 3600)
        pg.tool(["pg_restore", "-j", jobs, *_RESTORE_FLAGS, "-d", cfg.new.dbname, str(out)],
                cfg.new, timeout=24 * 3600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"pg_dump -Fd -Z 0 -j {jobs} + pg_restore -j {jobs}"


# ------------------------------------------------------------------ old host


def old_host_command(cfg: CutoverConfig, tool: str, *args: str) -> tuple[list[str], bytes]:
    """ssh argv running the old host's own `tool` (pg_dump, pg_dumpall) on the
    old database, and what to send on its standard input: the password goes
    through a 0600 passfile made there by mktemp and removed when the tool
    ends, never on a command line or in the environment."""
    target = cfg.cutover.old_pg_dump.removeprefix("ssh:")
    if not HOST_SPEC.fullmatch(target):  # again at run time: a "host" that is an option
        raise UserError(f"cutover.old_pg_dump {cfg.cutover.old_pg_dump[:80]!r}: must be "
                        "`local` or `ssh:user@host`")
    problem = ssh_options_problem(cfg.cutover.old_pg_dump_ssh_options)
    if problem:
        raise UserError(f"cutover.old_pg_dump_ssh_options: {problem}")
    old = cfg.old
    words = shlex.join([tool, "-h", old.host, "-p", str(old.port), "-U", old.user, *args])
    stdin = b""
    if old.password is not None:
        if "\n" in old.password or "\r" in old.password:
            raise UserError(f"{old}: the password holds a line break, which libpq's passfile "
                            "cannot carry", hint="choose another password")

        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace(":", "\\:")

        stdin = (f"{esc(old.host)}:{old.port}:*:{esc(old.user)}:{esc(old.password)}\n"
                 ).encode()
        words = ("umask 077 && f=$(mktemp) && trap 'rm -f \"$f\"' EXIT && cat > \"$f\" && "
                 f"PGPASSFILE=\"$f\" {words}")
    ssh = ["ssh", "-o", "BatchMode=yes", *cfg.cutover.old_pg_dump_ssh_options, "--", target]
    return [*ssh, words], stdin


def _from_old_host(cfg: CutoverConfig) -> str:
    cmd, stdin = old_host_command(cfg, "pg_dump", "-Fp", cfg.old.dbname)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
            rewrites = restore_plain(cfg.new, _lines(proc.stdout), ended=lambda: _ended(proc, err))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return (f"the old host's own pg_dump over SSH, streamed into psql in one transaction: "
            f"{rewrites.summary()}")


def old_host_dump_to(cfg: CutoverConfig, out: IO[bytes]) -> None:
    """The old host's own `pg_dump -Fp` of the old database written into
    `out` as it comes (the backup gate's rollback point for servers this
    machine's pg_dump cannot read); UserError when ssh or pg_dump fails."""
    cmd, stdin = old_host_command(cfg, "pg_dump", "-Fp", cfg.old.dbname)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            proc.communicate(stdin, timeout=24 * 3600)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        _ended(proc, err)


def _ended(proc: subprocess.Popen[bytes], err: IO[bytes]) -> None:
    """Called once the dump's output has ended: ssh and pg_dump succeeded?"""
    if proc.wait() != 0:
        err.seek(0)
        raise UserError(f"the old host's pg_dump failed (exit {proc.returncode}): "
                        + (pg.last_error(err.read().decode(errors="replace")) or "no message"),
                        hint="check cutover.old_pg_dump, its SSH access and pg_dump there")


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """Bytes as latin-1 text: one character per byte, so every byte passes
    unchanged whatever the dump's client_encoding (the dump sets it itself)."""
    for raw in stream:
        yield raw.decode("latin-1")


def _empty(new: Conn) -> None:
    """Every schema of the new database dropped and `public` made again (a
    plain dump of 8.x has no DROP ... IF EXISTS: a resume starts clean)."""
    schemas = [r[0] for r in pg.query(new, r"""
        SELECT quote_ident(nspname) FROM pg_namespace
         WHERE nspname NOT IN ('information_schema') AND nspname NOT LIKE 'pg\_%'""")]
    pg.execute(new, "".join(f"DROP SCHEMA {s} CASCADE;\n" for s in schemas)
               + "CREATE SCHEMA public AUTHORIZATION pg_database_owner;")


def restore_plain(new: Conn, lines: Iterable[str], *,
                  ended: Callable[[], None] | None = None) -> dump_sql.Rewrites:
    """An old pg_dump's plain SQL (latin-1 decoded lines), rewritten for 15,
    into psql on `new` in one transaction, after the new database is emptied:
    a refused line, a failed dump (`ended` raises) or an SQL error applies
    nothing of the dump."""
    _empty(new)
    rewrites = dump_sql.Rewrites()
    with pg.passfile(new) as pf, tempfile.TemporaryFile() as err:
        psql = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, **new.env(), "PGPASSFILE": str(pf)})
        assert psql.stdin is not None
        try:
            try:
                for line in dump_sql.for_postgresql_15(lines, rewrites):
                    psql.stdin.write(line.encode("latin-1"))
                if ended is not None:
                    ended()
            except BrokenPipeError:
                pass  # psql stopped on an error: its message is below
            except BaseException:
                psql.kill()  # before stdin closes: the transaction must not commit
                raise
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
            if psql.wait() != 0:
                err.seek(0)
                text = err.read().decode(errors="replace")
                raise UserError(f"psql ({new}): {pg.last_error(text) or 'failed'}",
                                hint="nothing of the dump was applied (one transaction)")
        finally:
            if psql.poll() is None:
                psql.kill()
            psql.wait()
    return rewrites
