"""Checks of one setting's value, named for where the value goes.

A value that reaches a rendered file or a command is checked for the grammar
of that destination (a systemd unit value, an nginx argument, a PostgreSQL
name, a shell word, a path, a host name, a CIDR, an AWS region, an SSM path).
model.py declares each setting's check beside the setting itself
(`setting(check=..., item=..., key=...)`), so a renamed field keeps its check.

Each check returns None when the value is fine, else the problem in words
(never the value itself when it could be a secret); the loader prefixes the
setting's dotted path and points at its line. Name-like grammars are ASCII:
`re.ASCII` everywhere, so `\\d` never matches another script's digits.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from builder.manifest.paths import remote_path_reason, unsafe_path_reason
from builder.manifest.scalars import short
from builder.manifest.ssh_options import ssh_options_problem

Check = Callable[[Any], "str | None"]

A = re.ASCII
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}", A)
REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]{1,2}", A)
SHA256 = re.compile(r"[0-9a-f]{64}", A)
MD5 = re.compile(r"[0-9a-f]{32}", A)
SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}", A)
UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}", A)
HBA_TOKEN = re.compile(r"\+?[A-Za-z0-9_.-]{1,63}(,\+?[A-Za-z0-9_.-]{1,63}){0,63}", A)
HOST_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME = re.compile(rf"{HOST_LABEL}(\.{HOST_LABEL})*", A)
DNS_NAME = re.compile(rf"{HOST_LABEL}(\.{HOST_LABEL})*\.?", A)
DEB_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+", A)
GEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(:[0-9A-Za-z.]{1,40})?", A)
SIZE = re.compile(r"[0-9]{1,9}[kKmMgG]?", A)
ENV_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", A)
#: A process environment variable an app reads (SECRET_KEY_BASE, RAILS_MASTER_KEY, ...).
ENV_VAR = re.compile(r"[A-Z][A-Z0-9_]{0,63}", A)
GUC_NAME = re.compile(r"[a-z_][a-z0-9_.]{0,62}", A)
SSM_PATH = re.compile(r"(/[A-Za-z0-9_.-]+)+", A)
SHELL_WORD = re.compile(r"[A-Za-z0-9._+:-]{1,64}", A)
CONFIGURE_FLAG = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_-]*(=[A-Za-z0-9_./:,+@-]*)?", A)
URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+,;=@:!-]*)?"
                 r"(\?[A-Za-z0-9._~%/+,;=&@:!-]*)?", A)
URL_PATH = re.compile(r"(/[A-Za-z0-9._~+-]+)+|/", A)
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?", A)
KMS_KEY = re.compile(r"[A-Za-z0-9:/_-]{1,2048}", A)
ZONE_ID = re.compile(r"[A-Z0-9]{1,32}", A)
AMI_NAME = re.compile(r"[A-Za-z0-9()\[\]./@_-]{3,128}", A)
INSTANCE_TYPE = re.compile(r"[a-z0-9-]+\.[a-z0-9]+", A)
PG_VERSION = re.compile(r"[0-9]+(\.[0-9]+)?", A)
INSTANCE_STORE = re.compile(r"ephemeral[0-9]{1,2}", A)
#: a plain mail address (no display name, comments or quoting): what lands in
#: an SMTP envelope and a From header as is
EMAIL = re.compile(rf"[A-Za-z0-9._%+-]{{1,64}}@{HOST_LABEL}(\.{HOST_LABEL})+", A)
#: one line of free text: no control characters (newline, CR, NUL, tab, escape)
CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
MAX_APP_SERVERS = 64
MAX_TEXT = 1000
TEMPLATE_FIELDS = ("name", "version", "arch")


def schema_version(expected: int) -> Check:
    def check(value: int) -> str | None:
        if value == expected:
            return None
        return f"unsupported manifest schema version {value} (this amibake reads {expected})"
    return check


def _shown(value: str) -> str:
    """A value as a problem quotes it: shortened, in repr form (escapes, one line)."""
    return repr(short(value))


def name(value: str) -> str | None:
    if NAME.fullmatch(value):
        return None
    return (f"{_shown(value)} must be lower-case letters, digits and '-', starting with a "
            "letter or digit (at most 64)")


def port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a TCP port (1..65535)"


def between(low: int, high: int) -> Check:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"{value} must be between {low} and {high}"
    return check


def matches(pattern: re.Pattern[str], what: str, limit: int = 0, show: bool = True) -> Check:
    """The value is `what` when `pattern` matches it whole (and it has at most
    `limit` characters); `show=False` leaves the value out of the problem."""
    def check(value: str) -> str | None:
        if pattern.fullmatch(value) and (not limit or len(value) <= limit):
            return None
        return f"{_shown(value)} is not {what}" if show else f"must be {what}"
    return check


def optional(check: Check) -> Check:
    """'' is allowed (the setting's "not set"); anything else must pass `check`."""
    def inner(value: str) -> str | None:
        return None if value == "" else check(value)
    return inner


# -------------------------------------------------------------- destinations


def distinct_non_empty(value: Sequence[str]) -> str | None:
    if not value:
        return "needs at least one entry"
    twice = sorted({v for v in value if list(value).count(v) > 1})
    return f"lists {', '.join(twice)} more than once" if twice else None


def path(value: str) -> str | None:
    """A directory or file amibake creates, writes, chowns or serves."""
    reason = unsafe_path_reason(value)
    return None if reason is None else f"{_shown(value)}: {reason}"


def mount_point(value: str) -> str | None:
    """Where a volume is mounted: /mnt is fine, system directories are not."""
    return path(value)


def rsync_location(value: str) -> str | None:
    """`/abs/path` or `[user@]host:/abs/path`: what rsync --delete syncs."""
    reason = remote_path_reason(value)
    if reason is None:
        return None
    return f"{_shown(value)}: {reason} (an absolute path, or host:/path for SSH)"


def ssh_options(value: Sequence[str]) -> str | None:
    return ssh_options_problem(value)


def text_line(value: str) -> str | None:
    """Free text that lands in a comment, a tag or a notice: one line."""
    if CONTROL.search(value):
        return "must be one line without control characters (newline, CR, tab, NUL)"
    if len(value) > MAX_TEXT:
        return f"is {len(value)} characters long (at most {MAX_TEXT})"
    return None


def ip_address(value: str) -> str | None:
    """An IP address (puma's and mongrel's bind address, a DNS record's address)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{_shown(value)} is not an IP address such as 0.0.0.0 or 127.0.0.1"
    return None


def is_host_name(site: str) -> bool:
    """A site_address that is a host name (a CNAME target), not an IP address."""
    return ip_address(site) is not None


def absolute_name(name: str) -> str:
    """A DNS name as compared and written: lower case, with the root's final dot."""
    return name.lower().rstrip(".") + "."


def site_address(value: str) -> str | None:
    """Where the site's DNS record points: an IP address (an A record) or a host name
    of two labels or more (a CNAME to it, e.g. a load balancer's DNS name; case is not
    significant, a final dot optional, the last label not all digits so a mistyped
    address is not taken for a name)."""
    if ip_address(value) is None:
        if ipaddress.ip_address(value).version == 6:
            return (f"{_shown(value)} is an IPv6 address: the switch writes an A record "
                    "(IPv4) or a CNAME; give the IPv4 address or a host name")
        return None
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if (len(labels) >= 2 and len(name) <= 253 and HOSTNAME.fullmatch(name.lower())
            and not labels[-1].isdigit()):
        return None
    return (f"{_shown(value)} is neither an IP address nor a DNS host name such as "
            "my-alb-123.us-east-1.elb.amazonaws.com")


def host(value: str) -> str | None:
    """A host name or an IP address."""
    if HOSTNAME.fullmatch(value) and len(value) <= 253:
        return None
    if ip_address(value) is None:
        return None
    return f"{_shown(value)} is not a host name or an IP address"


def host_port(value: str) -> str | None:
    """host[:port] with a host name or an IPv4 address."""
    head, sep, tail = value.partition(":")
    if value.count(":") > 1:
        return f"{_shown(value)}: host[:port] takes a host name or an IPv4 address"
    if host(head) is None and (not sep or _port_text(tail)):
        return None
    return f"{_shown(value)} is not host[:port]"


def _port_text(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def listen_addresses(value: str) -> str | None:
    """PostgreSQL listen_addresses: `*`, or host names / IPs separated by commas."""
    items = [item.strip() for item in value.split(",")]
    if items == ["*"] or items == [""] and value == "":
        return None
    for item in items:
        if item != "*" and host(item) is not None:
            return (f"{_shown(value)} is not a comma-separated list of host names or IP "
                    "addresses (or *)")
    return None


def cidr(value: str) -> str | None:
    """A network in CIDR form, host bits clear; '' is checked by the caller."""
    if not value:
        return None
    if not value.isascii():
        return f"{_shown(value)} is not a CIDR network such as 10.0.0.0/16"
    if "/" not in value:
        return f"{_shown(value)} needs a prefix length, e.g. {short(value)}/32"
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{_shown(value)} is not a CIDR network such as 10.0.0.0/16"
        return f"{_shown(value)} has host bits set (did you mean {net}?)"
    return None


def region(value: str) -> str | None:
    return None if REGION.fullmatch(value) else f"{_shown(value)} is not an AWS region name"


def url_path(value: str) -> str | None:
    """An absolute URL path (nginx error pages, smoke tests): normalised, safe characters."""
    if not URL_PATH.fullmatch(value) or len(value) > 1024:
        return (f"{_shown(value)} must be an absolute URL path of ASCII letters, digits "
                "and ._~+- such as /404.html")
    if any(part in (".", "..") for part in value.split("/")):
        return f"{_shown(value)} must not contain '.' or '..' segments"
    return None


def template(value: str) -> str | None:
    """image.name_template: only {name}, {version} and {arch}; the result an AMI name."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"{_shown(value)} is not a valid template: {exc}"
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS or spec or conversion:
            return (f"{_shown(value)}: {{{short(field_name)}}} is not allowed; use only "
                    "{name}, {version} and {arch}")
    sample = value.format(name="n", version="1.0.0", arch="x86_64")
    if not AMI_NAME.fullmatch(sample):
        return (f"{_shown(value)} does not make an AMI name (3-128 ASCII letters, digits "
                "and ()[]./@_-)")
    return None


def sha256(value: str) -> str | None:
    """'' is allowed here: check_ruby requires sha256 or md5."""
    return None if not value or SHA256.fullmatch(value) else "must be 64 lower-case hex digits"


SOURCE_LOCATION = re.compile(r"[A-Za-z0-9._~%/+,=@:-]{1,4096}", A)
GIT_REF = re.compile(r"[A-Za-z0-9._/+-]{1,255}", A)


def source_location(value: str) -> str | None:
    """Where the app's code is read from: a path (relative to the manifest) or a
    URL; handed to git or read by amibake, never to a shell."""
    if value.startswith("-"):
        return f"{_shown(value)} must not start with '-'"
    if not SOURCE_LOCATION.fullmatch(value):
        return (f"{_shown(value)} is not a path or URL (ASCII letters, digits and "
                "._~%/+,=@:-)")
    return None


def git_ref(value: str) -> str | None:
    """A tag, branch or commit: git's ref grammar, never an option."""
    if (value.startswith(("-", "/", ".")) or ".." in value or value.endswith(("/", ".lock"))
            or "//" in value or not GIT_REF.fullmatch(value)):
        return f"{_shown(value)} is not a git tag, branch or commit"
    return None


def md5(value: str) -> str | None:
    return None if not value or MD5.fullmatch(value) else "must be 32 lower-case hex digits"


def iso_time_with_offset(value: str) -> str | None:
    if not value.isascii():
        return f"{_shown(value)} is not an ISO 8601 time such as 2026-12-05T23:59-05:00"
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        return f"{_shown(value)} is not an ISO 8601 time such as 2026-12-05T23:59-05:00"
    if start.tzinfo is None:
        return f"{_shown(value)} needs a UTC offset, e.g. 2026-12-05T23:59-05:00"
    return None


def time_zone(value: str) -> str | None:
    problem = f"unknown time zone {_shown(value)} (an IANA name such as America/New_York)"
    if not re.fullmatch(r"[A-Za-z0-9_+/-]{1,64}", value, A) or ".." in value:
        return problem
    from zoneinfo import ZoneInfo  # here: only a manifest that names a time zone needs it

    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError):
        return problem
    return None


def old_web(value: str) -> str | None:
    if value == "local":
        return None
    kind, _, target = value.partition(":")
    if kind == "ssh" and remote_host(target) is None:
        return None
    return f"{_shown(value)} must be `local` or `ssh:user@host`"


def remote_host(value: str) -> str | None:
    """`host` or `user@host` as ssh takes it."""
    user, sep, name_ = value.rpartition("@")
    if sep and not UNIX_USER.fullmatch(user):
        return f"{_shown(value)}: the user part is not a user name"
    return host(name_)


def http_status(value: str) -> str | None:
    if len(value) == 3 and value.isascii() and value.isdigit() and value[0] in "45":
        return None
    return f"error page status {_shown(value)} must be a 4xx or 5xx HTTP status"


sql_name = matches(SQL_NAME, "a PostgreSQL name (lower-case letters, digits, _)")
unix_user = matches(UNIX_USER, "a unix user name (lower-case letters, digits, _ and -)")
hba_token = matches(HBA_TOKEN, "a pg_hba name list (names, `all`, `+group`, comma-separated)")
hostname = matches(HOSTNAME, "a lower-case DNS name such as payroll.example.com")
dns_name = matches(DNS_NAME, "a lower-case DNS name such as example.com.")
deb_package = matches(DEB_PACKAGE, "a Debian package name")
gem = matches(GEM, "a gem as `name` or `name:version`")
size = matches(SIZE, "an nginx size such as 20m")
#: Variables amibake sets for the app itself, or that change how programs
#: load (an app secret may not take their place).
RESERVED_ENV = frozenset({
    "DATABASE_URL", "RAILS_ENV", "RACK_ENV", "PORT", "BIND", "UPLOADS_DIR", "APP_NAME",
    "RAILS_LOG_TO_STDOUT", "RAILS_MAX_THREADS", "PATH", "HOME", "SHELL", "USER", "LANG",
    "RUBYOPT", "RUBYLIB", "GEM_HOME", "GEM_PATH", "TZ",
})
_ENV_VAR_NAME = matches(ENV_VAR, "an environment variable name such as SECRET_KEY_BASE "
                        "(upper-case letters, digits, _)")


def env_var(value: str) -> str | None:
    """An app secret's variable: not one amibake sets, nor one that changes loading."""
    problem = _ENV_VAR_NAME(value)
    if problem:
        return problem
    if value in RESERVED_ENV or value.startswith(("LD_", "BUNDLE_", "AMIBAKE_")):
        return f"{value} is set by amibake or changes how programs load; use another name"
    return None
environment = matches(ENV_NAME, "an environment name such as production "
                                "(lower-case letters, digits and _)")
guc_name = matches(GUC_NAME, "a PostgreSQL setting name (lower-case letters, digits, _ and .)")
shell_word = matches(SHELL_WORD, "a version such as 1.8.7-2012.02 (ASCII letters, digits "
                                 "and ._+:-)")
email = matches(EMAIL, "a plain mail address such as ops@example.com", limit=254)
email_or_name = matches(re.compile(rf"{EMAIL.pattern}|[A-Za-z0-9._-]{{1,64}}", A),
                        "a login name or mail address (ASCII letters, digits, ._-)", limit=254)
pg_version = matches(PG_VERSION, "a PostgreSQL major version such as 15")
instance_store = matches(INSTANCE_STORE, "an instance store name such as ephemeral0")
instance_type = matches(INSTANCE_TYPE, "an EC2 instance type")
bucket = matches(BUCKET, "an S3 bucket name, optionally with /prefix")
kms_key = matches(KMS_KEY, "a KMS key id, alias or ARN")
zone_id = matches(ZONE_ID, "a Route53 hosted zone id such as Z0123456789")
ssm_path = matches(SSM_PATH, "an SSM parameter path such as /amibake (/-separated ASCII letters, "
                             "digits and _.-)", limit=900)
url = matches(URL, "an http:// or https:// URL of plain ASCII characters (no spaces, quotes "
                   "or shell characters)", limit=2048, show=False)
configure_flag = matches(CONFIGURE_FLAG, "a configure flag such as --disable-install-doc "
                                         "(--name or --name=value of ASCII letters, digits "
                                         "and _./:,+@-)", limit=512)


def guc_value(value: str) -> str | None:
    """A postgresql.conf value: one line of printable ASCII (the renderer quotes it)."""
    if not re.fullmatch(r"[ -~]{0,1024}", value, A):
        return "must be one line of printable ASCII (at most 1024 characters)"
    return None
