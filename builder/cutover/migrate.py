"""The app's migrations on the new app server, inside the window: after the
data copy and its content gates (row counts, sequences, checksums compare
the copy with the old server, so they run before the schema moves on), and
before the smoke tests, which then check the migrated app.

The command (`cutover.migrate_command`, by default the image's
`amibake-migrate` unit restarted) runs on `cutover.new_app` over the
cutover's SSH; a failure stops the run with the migration's own error (the
unit's journal for the default command) and DNS untouched."""

from __future__ import annotations

from builder.cutover import remote
from builder.cutover.config import CutoverConfig
from builder.errors import UserError
from builder.proc import CommandError

UNIT = "amibake-migrate.service"
DEFAULT_COMMAND = f"sudo systemctl restart {UNIT}"
_JOURNAL = f"sudo journalctl -u {UNIT} -b -n 20 --no-pager -o cat"


def run_migrations(cfg: CutoverConfig) -> str:
    cut = cfg.cutover
    script = cut.migrate_command
    if script == DEFAULT_COMMAND:  # the unit's error is in its journal, not on stderr
        script = f"{script} || {{ rc=$?; {_JOURNAL} >&2; exit $rc; }}"
    where = cut.new_app.removeprefix("ssh:")
    try:
        out = remote.command(cut.new_app, cut.new_app_ssh_options, script, setting="new_app",
                             timeout=24 * 3600)
    except CommandError as err:
        lines = [ln.strip() for ln in err.stderr.splitlines() if ln.strip()]
        error = " | ".join(lines[-3:]) or f"exit code {err.returncode}"
        raise UserError(
            f"migrations on {where} failed: {error}",
            hint="DNS was not touched: `amibake cutover rollback` reopens the old site; fix "
                 "the migration, then run the cutover again") from err
    last = [ln for ln in out.splitlines() if ln.strip()][-1:]
    return f"migrations applied on {where}" + (f": {last[0].strip()}" if last else "")
