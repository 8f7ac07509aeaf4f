"""The manifest's `components.postgresql.backup` section: continuous backup
of the database to S3 with pgBackRest (see builder/db for why that engine).

Declared like the rest of the model (one frozen dataclass per concept, each
setting with its help); `check_backup` checks each value for the grammar of
the file it lands in (pgbackrest.conf, postgresql.conf, systemd units) and
runs with the manifest's other checks, so every problem points at its line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from builder.manifest.model import SecretRef, setting

if TYPE_CHECKING:
    from builder.manifest.model import Manifest

#: S3 bucket names (the current rules: 3..63 lower-case letters, digits, '.', '-')
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: a key prefix: path segments of safe characters, no leading or trailing '/'
PREFIX = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
#: an endpoint: host name or IPv4 address, optional port
ENDPOINT = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?")
#: a KMS key id, alias or ARN
KMS_KEY = re.compile(r"[A-Za-z0-9:/_+=.@-]{1,2048}")
#: what a systemd OnCalendar= value may hold (systemd.time(7)); checked by
#: `systemd-analyze calendar` in the tests, here only for what a unit line can hold
CALENDAR = re.compile(r"[A-Za-z0-9 *:,./~+-]{1,128}")
#: a pgBackRest backup label: full, or full_diff / full_incr
LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?")
PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+")


@dataclass(frozen=True, kw_only=True)
class Repository:
    """Where backups and archived WAL go: an S3 bucket and a key prefix."""

    bucket: str = setting(help="S3 bucket")
    prefix: str = setting("", help="key prefix inside the bucket (default: the manifest's name)")
    region: str = setting("us-east-1", help="the bucket's region")
    endpoint: str = setting(
        "", help="host[:port] of an S3-compatible endpoint (tests, emulators); default AWS's"
    )
    ca_file: str = setting("", help="CA bundle that signs the endpoint's TLS certificate")
    kms_key_id: str = setting("", help="KMS key for S3 server-side encryption (SSE-KMS)")
    cipher_passphrase: SecretRef | None = setting(
        None, help="repository encryption (aes-256-cbc) passphrase: a secret reference"
    )


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When backups run: systemd OnCalendar= expressions ('' = never)."""

    full: str = setting("Sun *-*-* 01:00:00", help="full backups")
    diff: str = setting("Mon..Sat *-*-* 01:00:00", help="differential backups (since the full)")
    incr: str = setting("", help="incremental backups (since the last backup), e.g. hourly")


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How many backups the repository keeps (older ones and their WAL expire)."""

    full: int = setting(2, help="full backups kept (or days, with full_type: time)")
    full_type: Literal["count", "time"] = setting(
        "count", help="`count`: keep N full backups; `time`: keep N days"
    )
    diff: int = setting(0, help="differential backups kept (0: pgBackRest's default)")


#: restore_on_boot values that are words, not a label or a time
RESTORE_WORDS = ("latest", "never")


@dataclass(frozen=True, kw_only=True)
class Backup:
    """Continuous backup to S3 (pgBackRest) and restore when the data is gone."""

    repository: Repository = setting(help="the S3 repository")
    wal_archiving: bool = setting(
        True, help="archive WAL at least every archive_timeout seconds; false: only as 16 MB "
                   "segments fill (backups still need WAL archived)"
    )
    archive_timeout: int = setting(
        60, help="seconds before a partly filled WAL segment is archived anyway (the RPO)"
    )
    schedule: Schedule = setting(default_factory=Schedule, help="backup timers")
    retention: Retention = setting(default_factory=Retention, help="what is kept")
    process_max: int = setting(2, help="parallel processes for backup and restore")
    restore_on_boot: str = setting(
        "latest",
        help="with a blank data directory: `latest`, `never` (start empty), a backup label "
             "(20261130-010000F) or a time with offset (2026-11-30T12:00:00+00:00)",
    )


Check = Callable[[str], "str | None"]


def _matches(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: str) -> str | None:
        return None if pattern.fullmatch(value) else f"{value!r} is not {what}"
    return check


def restore_target(value: str) -> str | None:
    """latest | never | a backup label | an ISO 8601 time with a UTC offset."""
    if value in RESTORE_WORDS or LABEL.fullmatch(value):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return (f"{value!r} is not `latest`, `never`, a backup label such as "
                "20261130-010000F, or a time such as 2026-11-30T12:00:00+00:00")
    if when.tzinfo is None:
        return f"{value!r} needs a UTC offset, e.g. {value}+00:00"
    return None


def _absolute(value: str) -> str | None:
    if PATH.fullmatch(value):
        return None
    return f"{value!r} must be an absolute path of letters, digits and ._-/+@"


def _prefix(value: str) -> str | None:
    if PREFIX.fullmatch(value) and ".." not in value.split("/"):
        return None
    return (f"{value!r} is not a key prefix (segments of letters, digits, '_', '.', '-' "
            "joined by '/', no leading or trailing '/')")


#: setting path under components.postgresql.backup → (value getter, check); '' = unset
_STRING_CHECKS: tuple[tuple[str, Callable[[Backup], str], Check], ...] = (
    ("repository.bucket", lambda b: b.repository.bucket,
     _matches(BUCKET, "an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")),
    ("repository.prefix", lambda b: b.repository.prefix, _prefix),
    ("repository.region", lambda b: b.repository.region,
     _matches(REGION, "an AWS region name")),
    ("repository.endpoint", lambda b: b.repository.endpoint,
     _matches(ENDPOINT, "host[:port] (no scheme: the endpoint is always HTTPS)")),
    ("repository.ca_file", lambda b: b.repository.ca_file, _absolute),
    ("repository.kms_key_id", lambda b: b.repository.kms_key_id,
     _matches(KMS_KEY, "a KMS key id, alias or ARN")),
    ("schedule.full", lambda b: b.schedule.full,
     _matches(CALENDAR, "a systemd calendar expression such as 'Sun *-*-* 01:00:00'")),
    ("schedule.diff", lambda b: b.schedule.diff,
     _matches(CALENDAR, "a systemd calendar expression such as 'Mon..Sat *-*-* 01:00:00'")),
    ("schedule.incr", lambda b: b.schedule.incr,
     _matches(CALENDAR, "a systemd calendar expression such as 'hourly'")),
    ("restore_on_boot", lambda b: b.restore_on_boot, restore_target),
)

#: setting path → (value getter, low, high)
_RANGES: tuple[tuple[str, Callable[[Backup], int], int, int], ...] = (
    ("archive_timeout", lambda b: b.archive_timeout, 1, 86400),
    ("process_max", lambda b: b.process_max, 1, 64),
    ("retention.full", lambda b: b.retention.full, 1, 9999),
    ("retention.diff", lambda b: b.retention.diff, 0, 9999),
)

BASE = "components.postgresql.backup"


def check_backup(m: Manifest, report: Callable[[str, str], None]) -> None:
    """Every value of the backup section, and how it fits the rest of the manifest."""
    pg = m.components.postgresql
    if pg is None or pg.backup is None:
        return
    b = pg.backup
    for path, get, check in _STRING_CHECKS:
        value = get(b)
        if value and (message := check(value)):
            report(f"{BASE}.{path}", f"{BASE}.{path}: {message}")
    for path, getn, low, high in _RANGES:
        number = getn(b)
        if not low <= number <= high:
            report(f"{BASE}.{path}", f"{BASE}.{path}: {number} must be between {low} and {high}")
    if not (b.schedule.full or b.schedule.diff or b.schedule.incr):
        report(f"{BASE}.schedule", f"{BASE}.schedule: no backup is ever scheduled "
                                   "(set at least `full`)")
    if b.schedule.full == "" and (b.schedule.diff or b.schedule.incr):
        report(f"{BASE}.schedule.full", f"{BASE}.schedule.full: differential and incremental "
                                        "backups need scheduled full backups")

