"""Strategy `dump`: the seed's method, improved — a parallel directory-format
dump restored in parallel, or one stream with no file in between."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from builder.cutover import pg
from builder.cutover.config import CutoverConfig

_DUMP_FLAGS = ["--no-publications", "--no-subscriptions"]
_RESTORE_FLAGS = ["--clean", "--if-exists", "--exit-on-error"]


def dump_restore(cfg: CutoverConfig, *, workdir: Path | None = None,
                 snapshot: str | None = None) -> str:
    """Copy the frozen old database onto the new one (idempotent: --clean).
    `snapshot`: an exported snapshot to dump (a rehearsal's, not frozen)."""
    cut = cfg.cutover
    dump_flags = [*_DUMP_FLAGS, *([f"--snapshot={snapshot}"] if snapshot else [])]
    pg.drop_partitioned_tables(cfg.new)  # --clean cannot (a resume, a retry after rollback)
    if cut.dump_format == "stream":
        pg.pipeline(
            ["pg_dump", "-Fc", *dump_flags, "-d", cfg.old.conninfo(with_password=False)],
            ["pg_restore", *_RESTORE_FLAGS, "-d", cfg.new.conninfo(with_password=False)],
            cfg.old, cfg.new, timeout=24 * 3600,
        )
        return "streamed pg_dump -Fc | pg_restore"
    tmp = Path(tempfile.mkdtemp(prefix="amibake-dump-", dir=workdir))
    try:
        out = tmp / "dump"
        jobs = str(max(1, cut.dump_jobs))
        pg.tool(["pg_dump", "-Fd", "-j", jobs, *dump_flags, "-f", str(out)],
                cfg.old, timeout=24 * 3600)
        pg.tool(["pg_restore", "-j", jobs, *_RESTORE_FLAGS, "-d", cfg.new.dbname, str(out)],
                cfg.new, timeout=24 * 3600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"pg_dump -Fd -j {jobs} + pg_restore -j {jobs}"
