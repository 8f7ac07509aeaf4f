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


def dump_restore(cfg: CutoverConfig, *, workdir: Path | None = None) -> str:
    """Copy the frozen old database onto the new one (idempotent: --clean)."""
    cut = cfg.cutover
    pg.drop_partitioned_tables(cfg.new)  # --clean cannot (a resume, a retry after rollback)
    if cut.dump_format == "stream":
        pg.pipeline(
            ["pg_dump", "-Fc", *_DUMP_FLAGS, "-d", cfg.old.conninfo(with_password=False)],
            ["pg_restore", *_RESTORE_FLAGS, "-d", cfg.new.conninfo(with_password=False)],
            cfg.old, cfg.new, timeout=24 * 3600,
        )
        return "streamed pg_dump -Fc | pg_restore"
    tmp = Path(tempfile.mkdtemp(prefix="amibake-dump-", dir=workdir))
    try:
        out = tmp / "dump"
        jobs = str(max(1, cut.dump_jobs))
        pg.tool(["pg_dump", "-Fd", "-j", jobs, *_DUMP_FLAGS, "-f", str(out)],
                cfg.old, timeout=24 * 3600)
        pg.tool(["pg_restore", "-j", jobs, *_RESTORE_FLAGS, "-d", cfg.new.dbname, str(out)],
                cfg.new, timeout=24 * 3600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"pg_dump -Fd -j {jobs} + pg_restore -j {jobs}"
