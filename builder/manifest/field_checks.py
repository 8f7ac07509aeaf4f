"""Checks of one setting's value, run as each value is read.

They need nothing but the value, so they run even when other parts of the
file are broken: a file with a bad port and a typo reports both. Checks
across settings (references, clashes) are in checks.py.

Each check returns None when the value is fine, else the problem in words;
the loader prefixes the setting's dotted path and points at its line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from builder.manifest import model as m

Check = Callable[[Any], "str | None"]

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+")
SHA256 = re.compile(r"[0-9a-f]{64}")
MD5 = re.compile(r"[0-9a-f]{32}")
SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
HBA_TOKEN = re.compile(r"\+?[A-Za-z0-9_.-]+(,\+?[A-Za-z0-9_.-]+)*")
PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
HOST_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME = re.compile(rf"{HOST_LABEL}(\.{HOST_LABEL})*")
DEB_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
SIZE = re.compile(r"[0-9]+[kKmMgG]?")
MAX_APP_SERVERS = 64


def schema_version(value: int) -> str | None:
    if value == m.SCHEMA_VERSION:
        return None
    return f"unsupported manifest schema version {value} (this amibake reads {m.SCHEMA_VERSION})"


def name(value: str) -> str | None:
    if NAME.fullmatch(value):
        return None
    return (f"{value!r} must be lower-case letters, digits and '-', starting with a letter "
            "or digit (at most 64)")


def port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a TCP port (1..65535)"


def between(low: int, high: int) -> Check:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"{value} must be between {low} and {high}"
    return check


def absolute(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} must be an absolute path"
    if not PATH.fullmatch(value):
        return f"{value!r}: paths may hold only letters, digits and ._-/+@"
    return None


def matches(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: str) -> str | None:
        return None if pattern.fullmatch(value) else f"{value!r} is not {what}"
    return check


sql_name = matches(SQL_NAME, "a PostgreSQL name (lower-case letters, digits, _)")
unix_user = matches(UNIX_USER, "a unix user name (lower-case letters, digits, _ and -)")
hba_token = matches(HBA_TOKEN, "a pg_hba name list (names, `all`, `+group`, comma-separated)")
hostname = matches(HOSTNAME, "a lower-case DNS name such as payroll.example.com")
deb_package = matches(DEB_PACKAGE, "a Debian package name")
size = matches(SIZE, "an nginx size such as 20m")
pg_version = matches(re.compile(r"[0-9]+(\.[0-9]+)?"), "a PostgreSQL major version such as 15")
instance_store = matches(re.compile(r"ephemeral[0-9]{1,2}"),
                         "an instance store name such as ephemeral0")
instance_type = matches(re.compile(r"[a-z0-9-]+\.[a-z0-9]+"), "an EC2 instance type")


def sha256(value: str) -> str | None:
    """'' is allowed here: check_ruby requires sha256 or md5."""
    return None if not value or SHA256.fullmatch(value) else "must be 64 lower-case hex digits"


def md5(value: str) -> str | None:
    return None if not value or MD5.fullmatch(value) else "must be 32 lower-case hex digits"


def cidr(value: str) -> str | None:
    """A network in CIDR form, host bits clear; '' is checked by the caller."""
    if not value:
        return None
    if "/" not in value:
        return f"{value!r} needs a prefix length, e.g. {value}/32"
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not a CIDR network such as 10.0.0.0/16"
        return f"{value!r} has host bits set (did you mean {net}?)"
    return None


def region(value: str) -> str | None:
    return None if REGION.fullmatch(value) else f"{value!r} is not an AWS region name"


def iso_time_with_offset(value: str) -> str | None:
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        return f"{value!r} is not an ISO 8601 time such as 2026-12-05T23:59-05:00"
    if start.tzinfo is None:
        return f"{value!r} needs a UTC offset, e.g. 2026-12-05T23:59-05:00"
    return None


def time_zone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        return f"unknown time zone {value!r} (an IANA name such as America/New_York)"
    return None


#: (class, field) → check of the field's value
FIELD_CHECKS: dict[tuple[type, str], Check] = {
    (m.Manifest, "amibake"): schema_version,
    (m.Manifest, "name"): name,
    (m.App, "name"): name,
    (m.App, "server_name"): hostname,
    (m.App, "user"): unix_user,
    (m.App, "root"): absolute,
    (m.App, "uploads_dir"): absolute,
    (m.Database, "name"): sql_name,
    (m.Database, "user"): sql_name,
    (m.Database, "network"): cidr,
    (m.Nginx, "listen"): port,
    (m.Nginx, "static_root"): absolute,
    (m.Nginx, "maintenance_flag"): absolute,
    (m.Nginx, "maintenance_page"): absolute,
    (m.Nginx, "retry_after"): between(0, 86400),
    (m.Nginx, "client_max_body_size"): size,
    (m.Tarball, "sha256"): sha256,
    (m.Tarball, "md5"): md5,
    (m.Tarball, "prefix"): absolute,
    (m.AppServer, "count"): between(1, MAX_APP_SERVERS),
    (m.AppServer, "base_port"): port,
    (m.AppServer, "threads"): between(1, 1024),
    (m.PostgreSQL, "version"): pg_version,
    (m.PostgreSQL, "port"): port,
    (m.PostgreSQL, "mount_point"): absolute,
    (m.PostgreSQL, "instance_store"): instance_store,
    (m.PostgreSQL, "data_dir"): absolute,
    (m.HbaRule, "database"): hba_token,
    (m.HbaRule, "user"): hba_token,
    (m.HbaRule, "address"): cidr,
    (m.Role, "instance_type"): instance_type,
    (m.ImageSpec, "login_user"): unix_user,
    (m.ImageSpec, "volume_size_gib"): between(1, 16384),
    (m.PublishSpec, "keep"): between(1, 1000),
    (m.Cutover, "window_start"): iso_time_with_offset,
    (m.Cutover, "timezone"): time_zone,
    (m.Cutover, "window_minutes"): between(1, 24 * 60),
    (m.DbEndpoint, "port"): port,
}

#: (class, field) of tuple settings → check of each item
ITEM_CHECKS: dict[tuple[type, str], Check] = {
    (m.Role, "ports"): port,
    (m.PublishSpec, "regions"): region,
    (m.Ruby, "packages"): deb_package,
    (m.ImageSpec, "packages"): deb_package,
}
