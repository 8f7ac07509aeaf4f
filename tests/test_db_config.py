"""The backup section of the manifest (checked with file:line:col) and the
engine files rendered from it: pgbackrest.conf as pgBackRest itself reads
it, archive_command as PostgreSQL reads it, timers as systemd reads them."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.manifest import load_manifest_text
from builder.manifest.model import Manifest
from builder.proc import run
from builder.render import pgbackrest as config
from builder.render.quoting import Unquotable

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
ANCHOR = '      log_min_duration_statement: "500"\n'


def _with_backup(body: str) -> tuple[str, int]:
    """The seed manifest with `body` (lines under `backup:`); the line `backup:` is on."""
    assert ANCHOR in SEED
    head = SEED[: SEED.index(ANCHOR) + len(ANCHOR)]
    text = head + "    backup:\n" + body + SEED[len(head):]
    return text, head.count("\n") + 1


def _load(body: str) -> Manifest:
    return load_manifest_text(_with_backup(body)[0], "m.yaml")


GOOD = """\
      repository:
        bucket: payroll-backups
        prefix: smallpayroll/db
        region: eu-west-1
        cipher_passphrase: {ssm: /smallpayroll/backup-passphrase}
      archive_timeout: 30
      schedule:
        full: "Sun *-*-* 01:00:00"
        diff: "Mon..Sat *-*-* 01:00:00"
        incr: hourly
      retention: {full: 3}
      restore_on_boot: latest
"""


def test_a_backup_section_loads_with_its_defaults() -> None:
    m = _load(GOOD)
    pg = m.components.postgresql
    assert pg is not None and pg.backup is not None
    b = pg.backup
    assert (b.repository.bucket, b.repository.prefix, b.archive_timeout) == \
        ("payroll-backups", "smallpayroll/db", 30)
    assert b.repository.cipher_passphrase is not None
    assert b.repository.cipher_passphrase.name == "/smallpayroll/backup-passphrase"
    assert b.retention.full == 3 and b.retention.full_type == "count"
    assert b.wal_archiving is True and b.process_max == 2
    assert pg.storage == "instance-store"


@pytest.mark.parametrize(("line", "value", "message"), [
    ("        bucket: payroll-backups", "        bucket: Payroll_Backups",
     "repository.bucket: 'Payroll_Backups' is not an S3 bucket name"),
    ("        prefix: smallpayroll/db", "        prefix: /smallpayroll/../db",
     "repository.prefix: '/smallpayroll/../db' is not a key prefix"),
    ("        region: eu-west-1", "        region: europe",
     "repository.region: 'europe' is not an AWS region name"),
    ("      archive_timeout: 30", "      archive_timeout: 0",
     "archive_timeout: 0 must be between 1 and 86400"),
    ('        incr: hourly', '        incr: "hourly\\nExecStart=/bin/sh"',
     "schedule.incr: 'hourly\\nExecStart=/bin/sh' is not a systemd calendar expression"),
    ("      restore_on_boot: latest", "      restore_on_boot: yesterday",
     "restore_on_boot: 'yesterday' is not `latest`, `never`, a backup label"),
    ("      restore_on_boot: latest", '      restore_on_boot: "2026-11-30T12:00:00"',
     "restore_on_boot: '2026-11-30T12:00:00' needs a UTC offset"),
])
def test_a_bad_value_points_at_its_line(line: str, value: str, message: str) -> None:
    body = GOOD.replace(line, value)
    assert body != GOOD
    text, backup_line = _with_backup(body)
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "m.yaml")
    [problem] = info.value.problems
    expected_line = backup_line + 1 + GOOD.splitlines().index(line.rstrip("\n"))
    assert problem.location.file == "m.yaml"
    assert problem.location.line == expected_line
    assert message in problem.message


def test_unknown_keys_literal_secrets_and_missing_bucket_are_reported() -> None:
    body = ("      repository:\n        bucket_name: x\n"
            "        cipher_passphrase: hunter2\n      retension: {full: 1}\n")
    text, backup_line = _with_backup(body)
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "m.yaml")
    got = {(p.location.line, p.message.split(" (")[0]) for p in info.value.problems}
    assert (backup_line + 2, "unknown key 'bucket_name' in "
                             "components.postgresql.backup.repository") in got
    assert any(line == backup_line + 3 and "literal secret is not allowed" in msg
               for line, msg in got)
    assert any(line == backup_line + 4 and "unknown key 'retension'" in msg
               for line, msg in got)
    assert any("missing required key 'bucket'" in msg for _, msg in got)


def test_a_schedule_with_no_full_backup_is_refused() -> None:
    with pytest.raises(UserError) as info:
        _load(GOOD.replace('        full: "Sun *-*-* 01:00:00"\n', '        full: ""\n'))
    assert any("need scheduled full backups" in p.message for p in info.value.problems)


# ------------------------------------------------------------------ rendering


def test_pgbackrest_reads_the_rendered_config(tmp_path: Path) -> None:
    """pgBackRest's own parser: every option known and valid for its command."""
    m = _load(GOOD)
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text(config.pgbackrest_conf(m))
    include = tmp_path / "conf.d"
    include.mkdir()
    (include / "cipher.conf").write_text(config.cipher_conf("correct horse"))
    text = conf.read_text()
    assert "repo1-s3-bucket=payroll-backups\n" in text
    assert "repo1-path=/smallpayroll/db\n" in text
    assert "repo1-s3-key-type=auto\n" in text
    assert "repo1-cipher-type=aes-256-cbc\n" in text and "cipher-pass" not in text
    assert "[smallpayroll]\npg1-path=/mnt/postgresql/15/main\n" in text
    # `help backup` parses the configuration and shows the values it would use
    argv = [config.PGBACKREST, f"--config={conf}", f"--config-include-path={include}",
            "--stanza=smallpayroll", "help", "backup"]
    proc = run(argv, capture=True)
    assert proc.stderr == ""  # no warning: every option known, every value valid
    assert "repo-s3-region                  S3 repository region [current=eu-west-1]" \
        in proc.stdout
    conf.write_text(text + "repo1-s3-bukcet=x\n")
    proc = run(argv, capture=True)
    assert "invalid option 'repo1-s3-bukcet'" in proc.stderr  # the parse above is real


def test_a_value_that_would_break_the_ini_line_is_refused() -> None:
    for value in ("a\nrepo1-cipher-pass=x", " padded", "", "tab\tinside"):
        with pytest.raises(Unquotable):
            config.ini_value(value)
    assert config.cipher_conf("correct horse") == \
        "[global]\nrepo1-cipher-pass=correct horse\n"


def test_archive_command_survives_postgresql_and_shell_quoting() -> None:
    """The setting as PostgreSQL itself parses it (`postgres -C`), then as sh splits it."""
    m = _load(GOOD)
    settings = config.postgresql_settings(m, config="/etc/it's here/pgbackrest.conf")
    assert settings["archive_timeout"] == "30" and settings["archive_mode"] == "on"
    work = Path(tempfile.mkdtemp(prefix="amibake-pgconf-"))
    try:
        shutil.chown(work, "postgres", "postgres")
        conf = work / "postgresql.conf"
        conf.write_text(f"data_directory = '{work}'\nhba_file = '/dev/null'\n"
                        "ident_file = '/dev/null'\n"
                        + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        parsed = run(["/usr/lib/postgresql/15/bin/postgres", f"--config-file={conf}",
                      "-C", "archive_command"], capture=True, user="postgres",
                     group="postgres").stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert parsed == config.archive_command(m, config="/etc/it's here/pgbackrest.conf")
    words = _sh_words(parsed)
    assert "--config=/etc/it's here/pgbackrest.conf" in words
    assert words[-2:] == ["archive-push", "%p"]


def _sh_words(command: str) -> list[str]:
    """How /bin/sh splits `command` into words."""
    out = subprocess.run(["sh", "-c", f"set -- {command}; for w; do printf '%s\\0' \"$w\"; done"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def test_timers_pass_systemd_analyze(tmp_path: Path) -> None:
    m = _load(GOOD)
    units = config.timer_units(m)
    assert sorted(units) == [f"amibake-backup-{k}.{s}" for k in ("diff", "full", "incr")
                             for s in ("service", "timer")]
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    for kind, calendar in (("full", "Sun *-*-* 01:00:00"), ("incr", "hourly")):
        assert f"OnCalendar={calendar}\n" in units[f"amibake-backup-{kind}.timer"]
        run(["systemd-analyze", "calendar", calendar], capture=True)
    assert "--type=incr backup\n" in units["amibake-backup-incr.service"]
    proc = run(["systemd-analyze", "verify", "--man=no",
                *(str(tmp_path / n) for n in sorted(units) if n.endswith(".timer"))],
               capture=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_no_backup_section_renders_nothing() -> None:
    m = load_manifest_text(SEED, "seed.yaml")
    assert config.postgresql_settings(m) == {} and config.timer_units(m) == {}
