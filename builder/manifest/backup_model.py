"""The manifest's `components.postgresql.backup` section: continuous backup
of the database to S3 with pgBackRest (see builder/db for why that engine).

Declared like the rest of the model (one frozen dataclass per concept, each
setting with its help and the check of where its value goes: pgbackrest.conf,
a systemd unit, an S3 key). The checks only this section needs are here, the
shared ones come from field_checks.py; `check_backup` checks settings
against each other and runs with the manifest's other cross checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from builder.manifest import field_checks as fc
from builder.manifest.model import SecretRef, setting

if TYPE_CHECKING:
    from builder.manifest.model import Manifest

A = re.ASCII
#: S3 bucket names (3..63 lower-case letters, digits, '.', '-'), without a prefix
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", A)
#: a key prefix: path segments of safe characters, no leading or trailing '/'
PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,255}(/[A-Za-z0-9_.-]{1,255}){0,15}", A)
#: what a systemd OnCalendar= value may hold (systemd.time(7)); the tests run
#: `systemd-analyze calendar` on the defaults, this is what a unit line can hold
CALENDAR = re.compile(r"[A-Za-z0-9 *:,./~+-]{1,128}", A)
#: a pgBackRest backup label: full, or full_diff / full_incr
LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?", A)
#: restore_on_boot values that are words, not a label or a time
RESTORE_WORDS = ("latest", "never")


def prefix(value: str) -> str | None:
    if PREFIX.fullmatch(value) and ".." not in value.split("/"):
        return None
    return (f"{fc._shown(value)} is not a key prefix (segments of letters, digits, '_', '.', "
            "'-' joined by '/', no leading or trailing '/')")


def restore_target(value: str) -> str | None:
    """latest | never | a backup label | an ISO 8601 time with a UTC offset."""
    if value in RESTORE_WORDS or LABEL.fullmatch(value):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return (f"{fc._shown(value)} is not `latest`, `never`, a backup label such as "
                "20261130-010000F, or a time such as 2026-11-30T12:00:00+00:00")
    if when.tzinfo is None:
        return f"{fc._shown(value)} needs a UTC offset, e.g. {value}+00:00"
    return None


bucket = fc.matches(BUCKET, "an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
calendar = fc.optional(fc.matches(
    CALENDAR, "a systemd calendar expression such as 'Sun *-*-* 01:00:00' or 'hourly'"))


@dataclass(frozen=True, kw_only=True)
class Repository:
    """Where backups and archived WAL go: an S3 bucket and a key prefix."""

    bucket: str = setting(help="S3 bucket", check=bucket)
    prefix: str = setting("", help="key prefix inside the bucket (default: the manifest's name)",
                          check=fc.optional(prefix))
    region: str = setting("us-east-1", help="the bucket's region", check=fc.region)
    endpoint: str = setting(
        "", help="host[:port] of an S3-compatible HTTPS endpoint (tests, emulators); "
                 "default AWS's", check=fc.optional(fc.host_port))
    ca_file: str = setting("", help="CA bundle that signs the endpoint's TLS certificate",
                           check=fc.optional(fc.path))
    kms_key_id: str = setting("", help="KMS key for S3 server-side encryption (SSE-KMS)",
                              check=fc.optional(fc.kms_key))
    cipher_passphrase: SecretRef | None = setting(
        None, help="repository encryption (aes-256-cbc) passphrase: a secret reference"
    )


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When backups run: systemd OnCalendar= expressions ('' = never)."""

    full: str = setting("Sun *-*-* 01:00:00", help="full backups", check=calendar)
    diff: str = setting("Mon..Sat *-*-* 01:00:00", help="differential backups (since the full)",
                        check=calendar)
    incr: str = setting("", help="incremental backups (since the last backup), e.g. hourly",
                        check=calendar)


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How many backups the repository keeps (older ones and their WAL expire)."""

    full: int = setting(2, help="full backups kept (or days, with full_type: time)",
                        check=fc.between(1, 9999))
    full_type: Literal["count", "time"] = setting(
        "count", help="`count`: keep N full backups; `time`: keep N days"
    )
    diff: int = setting(0, help="differential backups kept (0: pgBackRest's default)",
                        check=fc.between(0, 9999))


@dataclass(frozen=True, kw_only=True)
class Backup:
    """Continuous backup to S3 (pgBackRest) and restore when the data is gone."""

    repository: Repository = setting(help="the S3 repository")
    wal_archiving: bool = setting(
        True, help="archive WAL at least every archive_timeout seconds; false: only as 16 MB "
                   "segments fill (backups still need WAL archived)"
    )
    archive_timeout: int = setting(
        60, help="seconds before a partly filled WAL segment is archived anyway (the RPO)",
        check=fc.between(1, 86400),
    )
    schedule: Schedule = setting(default_factory=Schedule, help="backup timers")
    retention: Retention = setting(default_factory=Retention, help="what is kept")
    process_max: int = setting(2, help="parallel processes for backup and restore",
                               check=fc.between(1, 64))
    restore_on_boot: str = setting(
        "latest",
        help="with a blank data directory: `latest`, `never` (start empty), a backup label "
             "(20261130-010000F) or a time with offset (2026-11-30T12:00:00+00:00)",
        check=restore_target,
    )


BASE = "components.postgresql.backup"


def check_backup(m: Manifest, report: Callable[[str, str], None]) -> None:
    """The backup settings against each other."""
    pg = m.components.postgresql
    if pg is None or pg.backup is None:
        return
    schedule = pg.backup.schedule
    if not schedule.full and (schedule.diff or schedule.incr):
        report(f"{BASE}.schedule.full", "differential and incremental backups need scheduled "
                                         "full backups (schedule.full)")
    elif not schedule.full:
        report(f"{BASE}.schedule", "no backup is ever scheduled (set schedule.full)")
