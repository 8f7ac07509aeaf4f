"""pgBackRest's files for the db role, rendered from the manifest (pure).

- `pgbackrest_conf`: /etc/pgbackrest/pgbackrest.conf (an ini file: a value
  runs to the end of its line and has no quoting, so a value that could break
  the line is refused here as well as at load time);
- `cipher_conf`: the include file holding the repository passphrase (0600,
  written at boot from the secret store, never in user-data);
- `postgresql_settings`: archive_mode / archive_command / archive_timeout as
  postgresql.conf values (a shell command inside a PostgreSQL literal);
- `timer_units`: one oneshot service and one timer per scheduled backup kind.

Quoting for PostgreSQL and systemd is builder/render/quoting.py's; a value a
format cannot carry raises its `Unquotable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from builder.manifest.backup_model import LABEL, Backup
from builder.manifest.model import Manifest
from builder.render.quoting import Unquotable, pg_literal, sh, systemd_exec, systemd_value

PGBACKREST = "/usr/bin/pgbackrest"
CONF_PATH = "/etc/pgbackrest/pgbackrest.conf"
CONF_INCLUDE_DIR = "/etc/pgbackrest/conf.d"
CIPHER_CONF = f"{CONF_INCLUDE_DIR}/amibake-cipher.conf"
#: where an image keeps the manifest's `repository.ca_file` (the endpoint's CA)
INSTANCE_CA_FILE = "/etc/pgbackrest/amibake-ca.pem"
OS_USER = "postgres"
BACKUP_KINDS = ("full", "diff", "incr")


@dataclass(frozen=True)
class Instance:
    """Where the engine's own files live and how it gets S3 credentials."""

    log_path: str = "/var/log/pgbackrest"
    spool_path: str = "/var/spool/pgbackrest"
    lock_path: str = "/tmp/pgbackrest"
    #: `auto`: the instance profile's credentials from instance metadata;
    #: `shared`: key and secret from PGBACKREST_REPO1_S3_KEY{,_SECRET} (local runs)
    key_type: str = "auto"
    #: the CA bundle's path here ('' = the manifest's `repository.ca_file`)
    ca_file: str = ""


def backup_of(manifest: Manifest) -> Backup | None:
    pg = manifest.components.postgresql
    return None if pg is None else pg.backup


def stanza(manifest: Manifest) -> str:
    """pgBackRest's name for this stack's cluster: the manifest's name."""
    return manifest.name


def repo_path(manifest: Manifest, backup: Backup) -> str:
    return "/" + (backup.repository.prefix or manifest.name)


def repo_url(manifest: Manifest, backup: Backup) -> str:
    """s3://bucket/prefix, for messages."""
    return f"s3://{backup.repository.bucket}{repo_path(manifest, backup)}"


def ini_value(value: str) -> str:
    """A pgbackrest.conf value: one line, no surrounding blanks (it has no quoting)."""
    if not value or value != value.strip() or not value.isprintable():
        raise Unquotable("a pgbackrest.conf value must be one non-empty line without "
                         "control characters or surrounding blanks")
    return value


def _lines(section: str, options: list[tuple[str, str]]) -> list[str]:
    return [f"[{section}]", *(f"{k}={ini_value(v)}" for k, v in options if v != "")]


def pgbackrest_conf(manifest: Manifest, *, pg_path: str | None = None,
                    pg_port: int | None = None, pg_socket_path: str = "",
                    instance: Instance = Instance()) -> str:
    """pgbackrest.conf for the manifest's stanza (pg_path/port default to the manifest's)."""
    backup = backup_of(manifest)
    pg = manifest.components.postgresql
    if backup is None or pg is None:
        raise ValueError("the manifest has no components.postgresql.backup")
    repo = backup.repository
    endpoint, _, port = repo.endpoint.partition(":")
    retention = backup.retention
    glob: list[tuple[str, str]] = [
        ("repo1-type", "s3"),
        ("repo1-path", repo_path(manifest, backup)),
        ("repo1-s3-bucket", repo.bucket),
        ("repo1-s3-region", repo.region),
        ("repo1-s3-endpoint", endpoint or f"s3.{repo.region}.amazonaws.com"),
        ("repo1-storage-port", port),
        ("repo1-s3-uri-style", "path" if endpoint else ""),
        ("repo1-storage-ca-file", instance.ca_file or repo.ca_file),
        ("repo1-s3-key-type", instance.key_type),
        ("repo1-s3-kms-key-id", repo.kms_key_id),
        ("repo1-cipher-type", "aes-256-cbc" if repo.cipher_passphrase else ""),
        ("repo1-retention-full", str(retention.full)),
        ("repo1-retention-full-type", retention.full_type),
        ("repo1-retention-diff", str(retention.diff) if retention.diff else ""),
        ("repo1-bundle", "y"),  # small files bundled: far fewer S3 requests
        ("process-max", str(backup.process_max)),
        ("start-fast", "y"),
        ("compress-type", "zst"),
        ("log-path", instance.log_path),
        ("spool-path", instance.spool_path),
        ("lock-path", instance.lock_path),
        ("log-level-console", "warn"),
        ("log-level-stderr", "error"),
        ("log-level-file", "info"),
    ]
    cluster = [
        ("pg1-path", pg_path or pg.data_dir),
        ("pg1-port", str(pg_port or pg.port)),
        ("pg1-socket-path", pg_socket_path),
    ]
    return "\n".join([*_lines("global", glob), "", *_lines(stanza(manifest), cluster)]) + "\n"


def cipher_conf(passphrase: str) -> str:
    """The include file with the repository passphrase (resolved at boot, mode 0600)."""
    return "\n".join(_lines("global", [("repo1-cipher-pass", passphrase)])) + "\n"


def engine_args(manifest: Manifest, *, config: str = CONF_PATH,
                include_dir: str = CONF_INCLUDE_DIR, pg_path: str = "") -> list[str]:
    """pgBackRest and the options every command of this stanza starts with
    (`pg_path`: a data directory other than the manifest's)."""
    return [PGBACKREST, f"--config={config}", f"--config-include-path={include_dir}",
            f"--stanza={stanza(manifest)}", *([f"--pg1-path={pg_path}"] if pg_path else [])]


def archive_command(manifest: Manifest, *, config: str = CONF_PATH,
                    include_dir: str = CONF_INCLUDE_DIR, pg_path: str = "") -> str:
    """The shell command PostgreSQL runs per WAL segment (%p: the segment's path)."""
    args = engine_args(manifest, config=config, include_dir=include_dir, pg_path=pg_path)
    return " ".join(sh(a) for a in args) + " archive-push %p"


def restore_command(manifest: Manifest, *, config: str = CONF_PATH,
                    include_dir: str = CONF_INCLUDE_DIR, pg_path: str = "") -> str:
    """The shell command recovery runs per WAL segment it needs (%f name, %p path)."""
    args = engine_args(manifest, config=config, include_dir=include_dir, pg_path=pg_path)
    return " ".join(sh(a) for a in args) + ' archive-get %f "%p"'


def boot_restore_args(backup: Backup) -> list[str]:
    """`pgbackrest restore` options for the manifest's `restore_on_boot` (not `never`):
    `latest` replays all archived WAL; a label stops at the end of that backup;
    a time stops there. Either way the restored cluster is promoted."""
    target = backup.restore_on_boot
    if target == "latest":
        return []
    if LABEL.fullmatch(target):
        return [f"--set={target}", "--type=immediate", "--target-action=promote"]
    return ["--type=time", f"--target={pg_time(datetime.fromisoformat(target))}",
            "--target-action=promote"]


def pg_time(when: datetime) -> str:
    """A PostgreSQL timestamptz literal, as recovery_target_time reads it."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f%z")


def postgresql_settings(manifest: Manifest, *, config: str = CONF_PATH,
                        include_dir: str = CONF_INCLUDE_DIR,
                        pg_path: str = "") -> dict[str, str]:
    """name → postgresql.conf value (already quoted) for WAL archiving."""
    backup = backup_of(manifest)
    if backup is None:
        return {}
    return {
        "archive_mode": "on",
        "archive_command": pg_literal(archive_command(
            manifest, config=config, include_dir=include_dir, pg_path=pg_path)),
        "archive_timeout": str(backup.archive_timeout if backup.wal_archiving else 0),
    }


def unit_name(kind: str) -> str:
    return f"amibake-backup-{kind}"


def timer_units(manifest: Manifest, *, config: str = CONF_PATH) -> dict[str, str]:
    """unit file name → text: a service and a timer per scheduled backup kind."""
    backup = backup_of(manifest)
    if backup is None:
        return {}
    schedule = {"full": backup.schedule.full, "diff": backup.schedule.diff,
                "incr": backup.schedule.incr}
    units: dict[str, str] = {}
    for kind in BACKUP_KINDS:
        calendar = schedule[kind]
        if not calendar:
            continue
        argv = [*engine_args(manifest, config=config), f"--type={kind}", "backup"]
        name = unit_name(kind)
        units[f"{name}.service"] = "\n".join([
            "[Unit]",
            "Description=" + systemd_value(f"pgBackRest {kind} backup of {stanza(manifest)}"),
            "After=postgresql.service network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"User={OS_USER}",
            f"Group={OS_USER}",
            "ExecStart=" + systemd_exec(argv),
            "",
        ])
        units[f"{name}.timer"] = "\n".join([
            "[Unit]",
            "Description=" + systemd_value(f"pgBackRest {kind} backups of {stanza(manifest)}"),
            "",
            "[Timer]",
            "OnCalendar=" + systemd_value(calendar),
            "Persistent=true",
            "RandomizedDelaySec=300",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ])
    return units
