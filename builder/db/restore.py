"""Restore a backup from the repository into a local data directory, and
check a restore (`amibake db restore`, `amibake db verify`).

A restore never ends in an empty cluster: with no backup in the repository
it refuses before touching the data directory, and a failed restore removes
what it wrote. After pgBackRest has laid down the files, PostgreSQL is
started once on a private socket (archive_mode off, so a restored copy never
pushes WAL into the repository it came from) to replay archived WAL up to
the target and promote, then stopped cleanly: the directory is then a
finished cluster that starts anywhere.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from builder.db.repo import BackupInfo, Repo, own
from builder.errors import UserError
from builder.manifest.backup_model import LABEL
from builder.proc import CommandError, run
from builder.render.pgbackrest import pg_time
from builder.wait import NotYet, Waiter, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: longest a restored cluster may take to replay WAL and promote
RECOVERY_TIMEOUT = 6 * 3600


@dataclass(frozen=True)
class Target:
    """What to restore: the latest state, a backup set, or a point in time."""

    kind: str  # "latest" | "label" | "time"
    label: str = ""
    time: datetime | None = None

    def describe(self) -> str:
        if self.kind == "label":
            return f"backup {self.label}"
        if self.kind == "time" and self.time is not None:
            return f"time {self.time.isoformat()}"
        return "the latest archived WAL"


def parse_target(text: str) -> Target:
    """`latest`, a backup label, or an ISO 8601 time with a UTC offset."""
    if text == "latest":
        return Target("latest")
    if LABEL.fullmatch(text):
        return Target("label", label=text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--to {text!r}: not `latest`, a backup label or a time",
                        hint="e.g. --to 20261130-010000F or --to 2026-11-30T12:00:00+00:00"
                        ) from None
    if when.tzinfo is None:
        raise UserError(f"--to {text!r}: the time needs a UTC offset",
                        hint=f"e.g. --to {text}+00:00")
    return Target("time", time=when)


def _choose(backups: tuple[BackupInfo, ...], target: Target, url: str) -> BackupInfo:
    """The backup set a restore to `target` starts from."""
    if not backups:
        raise UserError(f"{url} holds no backup: nothing to restore, and an empty cluster "
                        "is not started in its place",
                        hint="take a first backup on the db instance, or check the bucket "
                             "and prefix")
    if target.kind == "label":
        for b in backups:
            if b.label == target.label:
                return b
        known = ", ".join(b.label for b in backups)
        raise UserError(f"{url} has no backup {target.label}", hint=f"backups: {known}")
    if target.kind == "time" and target.time is not None:
        earlier = [b for b in backups if b.stop <= target.time]
        if not earlier:
            raise UserError(f"{url}: no backup ended before {target.time.isoformat()}",
                            hint=f"the first backup ended at {backups[0].stop.isoformat()}")
        return earlier[-1]
    return backups[-1]


def _prepare_dir(pgdata: Path, user: str | None) -> bool:
    """Make `pgdata` (or take an empty one); True when we created it."""
    if pgdata.exists():
        if not pgdata.is_dir() or any(pgdata.iterdir()):
            raise UserError(f"{pgdata} is not an empty directory",
                            hint="restore into a new or empty data directory")
        created = False
    else:
        pgdata.mkdir(parents=True, mode=0o700)
        created = True
    pgdata.chmod(0o700)
    own(pgdata, user)
    return created


def _undo(pgdata: Path, created: bool) -> None:
    if created:
        shutil.rmtree(pgdata, ignore_errors=True)
        return
    for child in pgdata.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@dataclass
class Restored:
    backup: BackupInfo
    target: Target
    pgdata: Path


def restore(repo: Repo, pgdata: Path, target: Target) -> Restored:
    """Restore into `pgdata` (new or empty), replay WAL to `target`, leave it stopped."""
    info = repo.info()
    chosen = _choose(info.backups, target, repo.url)
    created = _prepare_dir(pgdata, repo.user)
    try:
        args = [f"--pg1-path={pgdata}", f"--set={chosen.label}", "--archive-mode=off",
                f"--process-max={repo.backup.process_max}",
                f"--recovery-option=restore_command={repo.restore_command(pgdata)}"]
        if target.kind == "label":
            args += ["--type=immediate", "--target-action=promote"]
        elif target.kind == "time" and target.time is not None:
            args += ["--type=time", f"--target={pg_time(target.time)}",
                     "--target-action=promote"]
        repo.pgbackrest("restore", args, action=f"restore {chosen.label} from")
        _complete_config(pgdata, repo.user)
        with running(repo, pgdata) as _:
            pass
    except BaseException:
        _undo(pgdata, created)
        raise
    return Restored(chosen, target, pgdata)


def _complete_config(pgdata: Path, user: str | None) -> None:
    """Debian keeps postgresql.conf and pg_hba.conf outside the data directory:
    give a restored directory minimal ones so it starts on its own."""
    for name, text in (("postgresql.conf", "# written by amibake db restore\n"),
                       ("pg_hba.conf", "local all all peer\n")):
        path = pgdata / name
        if not path.exists():
            path.write_text(text)
            own(path, user)


@contextmanager
def running(repo: Repo, pgdata: Path) -> Iterator[Path]:
    """PostgreSQL on `pgdata`, reachable only on a socket in the repo's scratch
    directory, until recovery has finished; stopped cleanly on the way out."""
    sock = Path(tempfile.mkdtemp(prefix="sock-", dir=repo.workdir))
    own(sock, repo.user)
    hba = repo.workdir / "hba.conf"
    hba.write_text("local all all trust\n")
    own(hba, repo.user)
    log = repo.workdir / "recovery.log"
    options = (f"-c listen_addresses='' -c unix_socket_directories='{sock}' "
               f"-c archive_mode=off -c hot_standby=on -c hba_file='{hba}' "
               "-c port=5432 -c logging_collector=off")
    proc = run([PG_BIN / "pg_ctl", "-D", pgdata, "-l", log, "-w",
                "-t", str(RECOVERY_TIMEOUT), "-o", options, "start"],
               check=False, capture=True, user=repo.user, group=repo.user)
    try:
        if proc.returncode != 0:
            raise NotYet("the server did not start")
        wait_for(lambda: _recovered(pgdata, sock, repo.user),
                 Waiter("recovery to finish", attempts=RECOVERY_TIMEOUT * 4, interval=0.25,
                        timeout=RECOVERY_TIMEOUT), retry_on=(CommandError,))
    except (NotYet, UserError):
        run([PG_BIN / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"],
            check=False, capture=True, user=repo.user, group=repo.user)
        raise UserError(f"the restored cluster did not finish recovery: {_log_problem(log)}",
                        hint="check the target (is it within the archived WAL?) or run "
                             "with --debug") from None
    try:
        yield sock
    finally:
        run([PG_BIN / "pg_ctl", "-D", pgdata, "-m", "fast", "-w", "stop"],
            check=False, capture=True, user=repo.user, group=repo.user)


class ServerGone(UserError):
    """The server stopped during recovery."""


def _recovered(pgdata: Path, sock: Path, user: str | None) -> None:
    """Return once recovery has ended (promoted); NotYet while it replays WAL."""
    if run([PG_BIN / "pg_ctl", "-D", pgdata, "status"], check=False, capture=True,
           user=user, group=user).returncode != 0:
        raise ServerGone("the server stopped during recovery")
    if psql(sock, "SELECT pg_is_in_recovery()", user) != [["f"]]:
        raise NotYet("still in recovery")


def _log_problem(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    bad = [ln for ln in lines if re.search(r"\b(FATAL|PANIC|ERROR)\b", ln)]
    line = (bad or lines or ["no server log"])[-1 if not bad else 0]
    return re.sub(r"^.*?\b(FATAL|PANIC|ERROR):\s*", "", line).strip()


def psql(sock: Path, sql: str, user: str | None, dbname: str = "postgres") -> list[list[str]]:
    proc = run([PG_BIN / "psql", "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                "-h", sock, "-p", "5432", "-U", "postgres", "-d", dbname, "-c", sql],
               capture=True, user=user, group=user)
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def verify(repo: Repo) -> dict[str, Any]:
    """Restore the latest state into a scratch directory, start it, check every
    database with pg_amcheck, and report what it holds."""
    scratch = Path(tempfile.mkdtemp(prefix="verify-", dir=repo.workdir))
    own(scratch, repo.user)
    restored = restore(repo, scratch / "data", Target("latest"))
    with running(repo, restored.pgdata) as sock:
        rows = psql(sock, "SELECT datname, pg_database_size(datname) FROM pg_database "
                          "WHERE datallowconn ORDER BY datname", repo.user)
        tables = {}
        for name, _ in rows:
            tables[name] = int(psql(sock, "SELECT count(*) FROM pg_class WHERE relkind = 'r' "
                                          "AND relnamespace <> 'pg_catalog'::regnamespace "
                                          "AND relnamespace <> 'information_schema'::regnamespace",
                                    repo.user, dbname=name)[0][0])
        check = run([PG_BIN / "pg_amcheck", "-h", sock, "-p", "5432", "-U", "postgres",
                     "--all", "--install-missing"], check=False, capture=True,
                    user=repo.user, group=repo.user)
        if check.returncode != 0:
            detail = (check.stdout + check.stderr).strip().splitlines()
            raise UserError(f"{repo.url}: the restored backup {restored.backup.label} fails "
                            f"pg_amcheck: {detail[0] if detail else 'no output'}",
                            hint=HINT_DAMAGE)
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "repository": repo.url, "backup": restored.backup.as_dict(),
        "databases": [{"name": n, "size": int(s), "tables": tables[n]} for n, s in rows],
        "amcheck": "ok",
    }


HINT_DAMAGE = "restore an earlier backup with `amibake db restore --to LABEL`"
