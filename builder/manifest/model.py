"""The manifest model: one frozen dataclass per concept.

This module is the contract between the loader (YAML → these classes, with
file:line errors), the renderers, the baker, the publisher and the cutover.
Each setting is declared once: its name is the YAML key (underscores as
written), its type drives parsing, its default is the YAML default, and
`help` in the field metadata documents it (`amibake validate --explain`,
README tables). Fields without a default are required.

Conventions the loader applies generically:
- `str`, `int`, `bool` scalars are type-checked (a bool is not an int).
- `tuple[X, ...]` is a YAML sequence; `dict[str, X]` a mapping.
- `Literal[...]` is an enum of allowed strings.
- A nested dataclass is a mapping; unknown keys are errors.
- `Version` is parsed with packaging; `SecretRef` from `{ssm: NAME}` or
  `{secretsmanager: NAME}`.
- `Optional` (`X | None`) fields may be absent.
- `check=` / `item=` / `key=` name the field's own checks (field_checks.py),
  run on the converted value with the problem at its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from packaging.version import Version

from builder.errors import Location
from builder.manifest import field_checks as fc

SCHEMA_VERSION = 1


def setting(
    default: Any = ...,
    help: str = "",
    *,
    check: fc.Check | None = None,
    item: fc.Check | None = None,
    key: fc.Check | None = None,
    **kw: Any,
) -> Any:
    """Declare one manifest setting: its help text and the checks of where its
    value goes (field_checks.py). `check` sees the whole value, `item` each
    item of a list or each value of a mapping, `key` each key of a mapping."""
    meta: dict[str, Any] = {"help": help}
    meta.update({k: v for k, v in (("check", check), ("item", item), ("key", key)) if v})
    if default is ...:
        return field(metadata=meta, **kw)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples / default_factory for mutable defaults")
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------- secrets


#: AMI root device types: an EBS snapshot, or an instance-store bundle in S3.
Backing = Literal["ebs", "instance-store"]
BACKINGS: tuple[str, ...] = get_args(Backing)
#: SSH host key types an instance can generate at first boot (cloud-init's
#: ssh_genkeytypes); DSA is not offered (OpenSSH disables it).
HostKeyType = Literal["ed25519", "ecdsa", "rsa"]

@dataclass(frozen=True)
class SecretRef:
    """A secret kept in a secret store, resolved on the instance at boot.

    YAML: `{ssm: /smallpayroll/db-password}` (SSM Parameter Store
    SecureString) or `{secretsmanager: smallpayroll/db}` (Secrets Manager
    secret id or ARN). Never a literal.
    """

    store: Literal["ssm", "secretsmanager"]
    name: str


# ------------------------------------------------------------------ components


@dataclass(frozen=True, kw_only=True)
class Tarball:
    """A source tarball fetched and built at bake time, pinned by checksum."""

    url: str = setting(help="where the tarball is downloaded from (http or https)",
                       check=fc.url)
    sha256: str = setting("", help="hex SHA-256 of the tarball; the build refuses any other",
                          check=fc.sha256)
    md5: str = setting(
        "", help="hex MD5, for old tarballs whose publisher gave only that; checked too",
        check=fc.md5,
    )
    prefix: str = setting(help="installation prefix, e.g. /opt/ree", check=fc.path)
    version: str = setting("", help="upstream version, for tags and logs",
                           check=fc.optional(fc.shell_word))
    configure_flags: tuple[str, ...] = setting(
        (), help="extra flags for ./installer or configure", item=fc.configure_flag)


@dataclass(frozen=True, kw_only=True)
class Nginx:
    """The web front end: nginx in front of the app servers."""

    upstream_role: str = setting(help="role whose app servers nginx proxies to", check=fc.name)
    balance: Literal["round_robin", "least_conn", "ip_hash", "fair"] = setting(
        "least_conn", help="upstream balancing; `fair` needs the upstream-fair module"
    )
    listen: int = setting(80, help="HTTP port", check=fc.port)
    static_root: str = setting("/srv/app/public", help="document root for static files",
                               check=fc.path)
    gzip_static: bool = setting(True, help="serve precompressed .gz files")
    page_cache: bool = setting(True, help="Rails page-cache rewrites: try $uri.html first")
    client_max_body_size: str = setting("20m", help="largest upload nginx accepts",
                                        check=fc.size)
    maintenance_flag: str = setting(
        "/var/www/maintenance/on",
        help="when this file exists nginx answers 503 with the maintenance page", check=fc.path,
    )
    maintenance_page: str = setting(
        "/var/www/maintenance/index.html", help="the page served while in maintenance",
        check=fc.path,
    )
    retry_after: int = setting(300, help="Retry-After seconds sent with 503",
                               check=fc.between(0, 86400))
    error_pages: dict[str, str] = setting(
        default_factory=lambda: {"404": "/404.html", "500": "/500.html"},
        help="status code → page under static_root (an absolute URL path)",
        key=fc.http_status, item=fc.url_path,
    )


@dataclass(frozen=True, kw_only=True)
class Ruby:
    """The Ruby interpreter: Debian packages, or a tarball built into a prefix."""

    source: Literal["debian", "tarball"] = setting("debian", help="where Ruby comes from")
    packages: tuple[str, ...] = setting(
        ("ruby", "ruby-rack", "puma", "ruby-pg"), help="Debian packages (source: debian)",
        item=fc.deb_package,
    )
    tarball: Tarball | None = setting(None, help="source tarball (source: tarball)")
    gems: tuple[str, ...] = setting(
        (), help="gems installed into the tarball Ruby: `name` or `name:version`",
        item=fc.gem,
    )


@dataclass(frozen=True, kw_only=True)
class AppServer:
    """A pack of N app-server processes on ports base_port..base_port+N-1."""

    kind: Literal["puma", "mongrel_cluster"] = setting("puma", help="app server")
    count: int = setting(2, help="number of processes",
                         check=fc.between(1, fc.MAX_APP_SERVERS))
    base_port: int = setting(8000, help="first port; process i listens on base_port+i",
                             check=fc.port)
    bind: str = setting("0.0.0.0", help="IP address the processes listen on",
                        check=fc.ip_address)
    threads: int = setting(4, help="threads per process (puma)", check=fc.between(1, 1024))
    environment: str = setting("production", help="RACK_ENV / RAILS_ENV",
                               check=fc.environment)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.base_port + i for i in range(self.count))


@dataclass(frozen=True, kw_only=True)
class HbaRule:
    """One pg_hba.conf line."""

    type: Literal["local", "host", "hostssl", "hostnossl"] = setting("host", help="connection type")
    database: str = setting(help="database name, or all", check=fc.hba_token)
    user: str = setting(help="role name, or all", check=fc.hba_token)
    address: str = setting("", help="CIDR (not for local)", check=fc.cidr)
    method: Literal["scram-sha-256", "md5", "peer", "trust", "reject"] = setting(
        "scram-sha-256", help="authentication method"
    )
    allow_world: bool = setting(
        False, help="say that a password or trust rule open to the world (a prefix "
                    "shorter than /8, e.g. 0.0.0.0/0) is meant")


@dataclass(frozen=True, kw_only=True)
class PostgreSQL:
    """PostgreSQL with its data directory on instance storage."""

    version: str = setting("15", help="major version (Debian package postgresql-N)",
                           check=fc.pg_version)
    port: int = setting(5432, help="TCP port", check=fc.port)
    listen_addresses: str = setting(
        "*", help="listen_addresses: `*`, or host names / IP addresses separated by commas",
        check=fc.listen_addresses)
    instance_store: str = setting("ephemeral0", help="block-device-mapping name of the volume",
                                  check=fc.instance_store)
    mount_point: str = setting("/mnt", help="where the instance store is mounted",
                               check=fc.mount_point)
    data_dir: str = setting(
        "/mnt/postgresql/15/main", help="data directory; under mount_point for instance storage",
        check=fc.path,
    )
    hba: tuple[HbaRule, ...] = setting((), help="pg_hba rules added before the defaults")
    settings: dict[str, str] = setting(
        default_factory=dict, help="extra postgresql.conf settings (not those amibake sets, "
        "nor those that run commands or load libraries)", key=fc.guc_name, item=fc.guc_value,
    )
    storage: Literal["instance-store", "ebs"] = setting(
        "instance-store", help="where data_dir lives: instance store, or a persistent EBS volume"
    )
    volume_size: int = setting(20, help="GiB of the gp3 volume made for `storage: ebs`",
                               check=fc.between(1, 16384))
    backup: backup_model.Backup | None = setting(None, help="continuous backup to S3 (pgBackRest)")


@dataclass(frozen=True, kw_only=True)
class Components:
    """Configuration of each component; a role switches components on by name."""

    nginx: Nginx | None = setting(None, help="web front end")
    ruby: Ruby | None = setting(None, help="Ruby interpreter")
    appserver: AppServer | None = setting(None, help="app-server pack")
    postgresql: PostgreSQL | None = setting(None, help="database server")


#: The component names, in order: the fields of `Components`, the one list.
COMPONENT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Components))

# --------------------------------------------------------------------- the app


@dataclass(frozen=True, kw_only=True)
class Database:
    """The app's database and the role it connects as."""

    name: str = setting(help="database name", check=fc.sql_name)
    user: str = setting(help="role the app connects as", check=fc.sql_name)
    password: SecretRef = setting(help="secret store reference; never a literal")
    host_role: str = setting(help="role that runs the database server", check=fc.name)
    network: str = setting("10.0.0.0/16", help="CIDR the app servers connect from",
                           check=fc.cidr)
    allow_world: bool = setting(
        False, help="say that a network open to the world (a prefix shorter than /8, "
                    "e.g. 0.0.0.0/0) is meant")


@dataclass(frozen=True, kw_only=True)
class AppCode:
    """Where the app's own code comes from (builder/app/source.py fetches it).

    Exactly one of `path` (a directory, relative to the manifest), `git`
    (with `ref`) or `tarball` (with `sha256`).
    """

    path: str = setting("", help="a local checkout, relative to the manifest",
                        check=fc.optional(fc.source_location))
    git: str = setting("", help="a git repository: a path (relative to the manifest) or URL",
                       check=fc.optional(fc.source_location))
    ref: str = setting("", help="tag, branch or commit of `git`; resolved to the exact commit",
                       check=fc.optional(fc.git_ref))
    tarball: str = setting("", help="a .tar(.gz|.xz|.bz2|.zst) of the app: path or URL",
                           check=fc.optional(fc.source_location))
    sha256: str = setting("", help="hex SHA-256 of the tarball, checked before unpacking",
                          check=fc.optional(fc.sha256))

    @property
    def kind(self) -> Literal["path", "git", "tarball"]:
        return "git" if self.git else "tarball" if self.tarball else "path"


@dataclass(frozen=True, kw_only=True)
class App:
    """The application the servers run."""

    name: str = setting(help="app name; unix user and paths derive from it", check=fc.name)
    server_name: str = setting(help="the site's DNS name, e.g. payroll.example.com",
                               check=fc.hostname)
    user: str = setting("app", help="unix user the app servers run as", check=fc.unix_user)
    root: str = setting("/srv/app", help="where the app's code lives", check=fc.path)
    uploads_dir: str = setting("/var/uploads", help="where uploaded files are kept",
                               check=fc.path)
    database: Database = setting(help="the app's database")
    code: Literal["sample", "none"] | AppCode = setting(
        "sample", help="`sample`: amibake's Rack sample app; `none`: deployed separately; "
        "or the team's own app: {path: DIR}, {git: URL, ref: REF} or "
        "{tarball: PATH-or-URL, sha256: HEX}"
    )
    secrets: dict[str, SecretRef] = setting(
        default_factory=dict,
        help="environment variable → secret store reference (SECRET_KEY_BASE, "
             "RAILS_MASTER_KEY, ...), resolved on the instance at boot into a 0600 env file",
        key=fc.env_var,
    )


# ------------------------------------------------------------------- roles


@dataclass(frozen=True, kw_only=True)
class Role:
    """A server role: which components run on an instance started in it."""

    name: str
    components: tuple[str, ...] = setting(help="component names from `components`")
    description: str = setting("", help="what this role is for", check=fc.text_line)
    ports: tuple[int, ...] = setting((), help="extra TCP ports to open (security group)",
                                     item=fc.port)
    instance_type: str = setting("t3.small", help="EC2 instance type for launch",
                                 check=fc.instance_type)


# ------------------------------------------------------------------- image


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """How the image is built."""

    distro: Literal["debian"] = setting("debian", help="distribution")
    release: Literal["bookworm"] = setting("bookworm", help="release")
    architecture: Literal["x86_64"] = setting("x86_64", help="CPU architecture")
    volume_size_gib: int = setting(4, help="root volume size",
                                   check=fc.between(1, 16384))
    boot_mode: Literal["uefi-preferred", "uefi", "legacy-bios"] = setting(
        "uefi-preferred", help="EC2 boot mode"
    )
    login_user: str = setting("admin", help="user that gets the instance's SSH key",
                              check=fc.unix_user)
    ssh_host_key_types: tuple[HostKeyType, ...] = setting(
        ("ed25519", "ecdsa"),
        help="SSH host keys each instance generates at its first boot; add rsa for "
             "clients without ed25519/ecdsa (RSA-3072 costs seconds of boot on small CPUs)",
        check=fc.distinct_non_empty)
    roles: tuple[str, ...] = setting((), help="roles baked in (default: all)", item=fc.name)
    packages: tuple[str, ...] = setting((), help="extra Debian packages", item=fc.deb_package)
    name_template: str = setting(
        "{name}-{version}", help="AMI name; {name}, {version}, {arch} are filled in",
        check=fc.template,
    )
    backing: Backing = setting("ebs", help="AMI root device type")


@dataclass(frozen=True, kw_only=True)
class PublishSpec:
    """Where and how AMIs are published."""

    regions: tuple[str, ...] = setting(("us-east-1",), help="first is the home region",
                                       item=fc.region)
    ssm_prefix: str = setting("/amibake", help="SSM parameter prefix, a path such as /amibake",
                              check=fc.ssm_path)
    kms_key_ids: dict[str, str] = setting(
        default_factory=dict, help="region → KMS key id to encrypt snapshots with",
        key=fc.region, item=fc.kms_key,
    )
    bucket: str = setting("", help="S3 bucket for instance-store bundles (bucket[/prefix])",
                          check=fc.optional(fc.bucket))
    keep: int = setting(3, help="versions kept by `amibake amis prune`", check=fc.between(1, 1000))


# ------------------------------------------------------------------ cutover


@dataclass(frozen=True, kw_only=True)
class DbEndpoint:
    """A PostgreSQL connection (libpq keywords)."""

    host: str = setting(help="host name or address", check=fc.host)
    port: int = setting(5432, help="port", check=fc.port)
    dbname: str = setting(help="database", check=fc.sql_name)
    user: str = setting(help="superuser used for the cutover", check=fc.sql_name)
    password: SecretRef | None = setting(None, help="secret reference; none for peer/trust")


@dataclass(frozen=True, kw_only=True)
class FilesSync:
    """Uploaded files moved with rsync."""

    source: str = setting(help="old server's directory, `[user@]host:/path` for SSH",
                          check=fc.rsync_location)
    destination: str = setting(
        help="new server's directory, `[user@]host:/path` for SSH; never / or a system "
             "directory (rsync --delete)", check=fc.rsync_location)
    transport: Literal["local", "ssh"] = setting("local", help="how rsync reaches the hosts")
    ssh_options: tuple[str, ...] = setting(
        (), help="extra ssh options: -p, -i, -l and -o Key=Value for connection and host-key "
                 "settings (never ProxyCommand, LocalCommand, -F …)", check=fc.ssh_options)


@dataclass(frozen=True, kw_only=True)
class DnsSpec:
    """The record that moves, and who serves it."""

    provider: Literal["route53", "rfc2136"] = setting(help="DNS provider")
    zone: str = setting(help="zone name, e.g. example.com.", check=fc.dns_name)
    record: str = setting(help="record name, e.g. payroll.example.com.", check=fc.dns_name)
    new_address: str = setting(
        help="the new site: an IP address (A record), or a host name such as the stack's "
             "load balancer (`stack deploy`'s SiteAddress): the record becomes a CNAME to it",
        check=fc.site_address)
    low_ttl: int = setting(60, help="TTL set ahead of the window", check=fc.between(0, 86400))
    final_ttl: int = setting(
        0, help="TTL set back after the watch period; 0: the record's TTL before the cutover",
        check=fc.between(0, 7 * 86400))
    raise_ttl_after: int = setting(
        3600, help="seconds of watching after the switch before the TTL is raised back "
                   "(never before the old address has left every cache)",
        check=fc.between(0, 30 * 86400))
    hosted_zone_id: str = setting("", help="Route53 zone id (required for route53)",
                                  check=fc.optional(fc.zone_id))
    server: str = setting("", help="RFC 2136 primary, host[:port] (required for rfc2136)",
                          check=fc.optional(fc.host_port))
    tsig_key: SecretRef | None = setting(None, help="RFC 2136 TSIG key (name:algorithm:secret)")
    nameservers: tuple[str, ...] = setting(
        (), help="authoritative servers to verify against, host[:port]; default: the zone's NS",
        item=fc.host_port,
    )
    resolvers: tuple[str, ...] = setting(
        (), help="recursive resolvers, host[:port], that pre-flight and the smoke test ask "
                 "for the addresses of a host-name new_address; default: the system's",
        item=fc.host_port,
    )


@dataclass(frozen=True, kw_only=True)
class NoticeMail:
    """The notice sent by mail (`amibake cutover notify`)."""

    smtp_host: str = setting(help="SMTP server (submission)", check=fc.host)
    smtp_port: int = setting(587, help="its port", check=fc.port)
    starttls: bool = setting(True, help="STARTTLS (certificate checked) before anything is sent")
    sender: str = setting(help="From address", check=fc.email)
    recipients_file: str = setting(
        help="file with one address a line (# comments, blank lines allowed)", check=fc.path)
    username: str = setting("", help="SMTP login; none: send without one",
                            check=fc.optional(fc.email_or_name))
    password: SecretRef | None = setting(None, help="SMTP password, a secret reference")
    subject: str = setting("", help="subject; default: the app's name and the window",
                           check=fc.optional(fc.text_line))


@dataclass(frozen=True, kw_only=True)
class Notice:
    """What users are told."""

    contact: str = setting(help="whom to contact", check=fc.text_line)
    lead_days: int = setting(14, help="days between the notice and the window",
                             check=fc.between(0, 365))
    mail: NoticeMail | None = setting(None, help="send the notice by mail")
    banner: bool = setting(True, help="`cutover notify` also shows the notice as a banner on "
                                      "the old site's pages until the window (its nginx "
                                      "includes the banner file; cutover.old_web_reload)")


@dataclass(frozen=True, kw_only=True)
class CutoverLogin:
    """The new db role ready to receive: it creates cutover.new_db.user as a
    superuser LOGIN with new_db.password (resolved on the instance) and a
    pg_hba line for the address the cutover runs from; the cutover's last
    step takes LOGIN away and the instance's next setup run drops the role
    and the line."""

    from_address: str = setting(help="where `amibake cutover` runs, one address as "
                                     "a.b.c.d/32 (or /128)", check=fc.cidr)
    tls: bool = setting(True, help="`hostssl` (true) or `host` line in pg_hba.conf")


@dataclass(frozen=True, kw_only=True)
class FormSmoke:
    """A scripted login or form POST against the new site before DNS moves
    (the seed: "make sure users can log in")."""

    form_path: str = setting("", help="page holding the form (its CSRF token is read there); "
                                      "none: POST without one", check=fc.optional(fc.url_path))
    action: str = setting(help="path the form is POSTed to", check=fc.url_path)
    fields: dict[str, str] = setting(default_factory=dict, help="field → value",
                                     key=fc.text_line, item=fc.text_line)
    secret_fields: dict[str, SecretRef] = setting(
        default_factory=dict, help="field → secret reference (a test user's password)",
        key=fc.text_line)
    csrf_field: str = setting("authenticity_token", help="hidden field holding the CSRF token "
                              "(Rails' default); '' for none", check=fc.optional(fc.text_line))
    expect_status: int = setting(0, help="HTTP status expected; 0: any 2xx or 3xx",
                                 check=fc.between(0, 599))
    expect_redirect: str = setting("", help="path the answer redirects to (Location)",
                                   check=fc.optional(fc.url_path))
    expect_text: str = setting("", help="text the answer (or the page it redirects to) holds",
                               check=fc.optional(fc.text_line))


@dataclass(frozen=True, kw_only=True)
class Cutover:
    """Moving the live app onto the new servers."""

    strategy: Literal["dump", "replicate"] = setting("replicate", help="database strategy")
    window_start: str = setting(help="ISO 8601 with timezone, e.g. 2026-12-05T23:59-05:00",
                                check=fc.iso_time_with_offset)
    window_minutes: int = setting(30, help="announced length of the outage window",
                                  check=fc.between(1, 24 * 60))
    timezone: str = setting("UTC", help="IANA zone used in the notice", check=fc.time_zone)
    old_db: DbEndpoint = setting(help="the database being moved")
    new_db: DbEndpoint = setting(help="where it moves to")
    files: FilesSync | None = setting(None, help="uploaded files")
    dns: DnsSpec = setting(help="the record to switch")
    notice: Notice = setting(help="user notice")
    old_site: str = setting(help="URL of the old site (maintenance switch, rollback)",
                            check=fc.url)
    new_site: str = setting(help="URL of the new site for smoke tests", check=fc.url)
    old_web: str = setting("local", help="`local` or `ssh:user@host` where the old nginx runs",
                           check=fc.old_web)
    old_web_ssh_options: tuple[str, ...] = setting(
        (), help="extra ssh options for old_web (the same allow-list as files.ssh_options)",
        check=fc.ssh_options)
    old_pg_dump: str = setting(
        "local", help="dump strategy: `local` (this machine's pg_dump, PostgreSQL 15's, reads "
        "servers from 9.2) or `ssh:user@host` (the old host's own pg_dump, streamed: "
        "PostgreSQL 8.1-9.1)", check=fc.old_web)
    old_pg_dump_ssh_options: tuple[str, ...] = setting(
        (), help="extra ssh options for old_pg_dump (the same allow-list as files.ssh_options)",
        check=fc.ssh_options)
    checksum_when: Literal["before_switch", "after_switch"] = setting(
        "before_switch", help="when per-table content checksums run"
    )
    smoke_paths: tuple[str, ...] = setting(("/health", "/"), help="paths that must answer 200",
                                           item=fc.url_path)
    dump_format: Literal["copy", "directory", "stream"] = setting(
        "copy", help="dump strategy: `copy` (schema by pg_dump, each table's rows by "
        "COPY | COPY FREEZE, indexes by pg_restore -j), `directory` (`pg_dump -Fd -Z 0 -j` + "
        "`pg_restore -j`), or `stream` (pg_dump -Fc | pg_restore)"
    )
    dump_jobs: int = setting(2, help="parallel jobs: tables copied at once (copy), pg_dump -Fd "
                             "(directory), pg_restore -j (copy, directory)",
                             check=fc.between(1, 64))
    publisher: str = setting(
        "", help="old database as the new server reaches it, host[:port]; default old_db",
        check=fc.optional(fc.host_port),
    )
    catch_up_timeout: int = setting(600, help="seconds to wait for the subscriber to catch up",
                                    check=fc.between(1, 7 * 24 * 3600))
    form_smoke: FormSmoke | None = setting(
        None, help="a scripted login/POST on the new site, with the GET smoke tests")
    old_web_reload: str = setting(
        "sudo systemctl reload nginx", help="the command that reloads the old nginx on "
        "old_web (after the notice banner's file is written or removed)", check=fc.text_line)
    old_access_log: str = setting(
        "/var/log/nginx/access.log", help="the old site's nginx access log (combined format) "
        "on old_web, read by `cutover watch`", check=fc.path)
    new_app: str = setting(
        "", help="`local` or `ssh:user@host` of a new app server: the app's migrations run "
                 "there after the data copy (none: no migrations)",
        check=fc.optional(fc.old_web))
    new_app_ssh_options: tuple[str, ...] = setting(
        (), help="extra ssh options for new_app (the allow-list of files.ssh_options)",
        check=fc.ssh_options)
    migrate_command: str = setting(
        "sudo systemctl restart amibake-migrate.service",
        help="the command run on new_app (the image's migration unit; exit 0: applied)",
        check=fc.text_line)
    rollback_dump: str = setting(
        "", help="directory where a fresh `pg_dump -Fc` of the old database is kept as the "
                 "rollback point before anything changes; '' keeps none",
        check=fc.optional(fc.path))
    receive: CutoverLogin | None = setting(
        None, help="make the db role create the cutover's login on the new server")
    new_db_host: str = setting(
        "", help="`local` or `ssh:user@host` of the new db server: with "
                 "components.postgresql.backup, `backup_command` runs there after the DNS "
                 "switch unless a full backup taken after it is already in the repository "
                 "(none: only check for one)", check=fc.optional(fc.old_web))
    new_db_host_ssh_options: tuple[str, ...] = setting(
        (), help="extra ssh options for new_db_host (the allow-list of files.ssh_options)",
        check=fc.ssh_options)
    backup_command: str = setting(
        "sudo systemctl start amibake-backup-full.service",
        help="the command run on new_db_host for a full backup (the db role's full-backup "
             "unit; exit 0: taken)", check=fc.text_line)


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A whole manifest file."""

    amibake: int = setting(help=f"manifest schema version (currently {SCHEMA_VERSION})",
                           check=fc.schema_version(SCHEMA_VERSION))
    name: str = setting(help="image name, [a-z0-9-]", check=fc.name)
    version: Version = setting(help="image version (PEP 440, e.g. 1.2.0)")
    description: str = setting("", help="free text, one line", check=fc.text_line)
    app: App = setting(help="the application")
    components: Components = setting(help="component configuration")
    roles: dict[str, Role] = setting(help="role name → role")
    image: ImageSpec = setting(default_factory=ImageSpec, help="how the image is built")
    publish: PublishSpec = setting(default_factory=PublishSpec, help="where it is published")
    cutover: Cutover | None = setting(None, help="the move to the new servers")
    stack: stack_model.Stack | None = setting(
        None, help="the whole app on AWS as one CloudFormation stack")

    # Filled in by the loader, not read from YAML:
    source: Path = field(default=Path("<memory>"), metadata={"internal": True})
    #: dotted YAML path (e.g. "components.nginx.listen") → where it was written
    locations: dict[str, Location] = field(
        default_factory=dict, metadata={"internal": True}, compare=False, hash=False
    )

    def where(self, path: str) -> Location:
        """The location of a dotted YAML path, or the nearest enclosing one."""
        while path:
            if path in self.locations:
                return self.locations[path]
            path = path.rpartition(".")[0]
        return Location(str(self.source), 1, 1)

    @property
    def baked_roles(self) -> tuple[str, ...]:
        return self.image.roles or tuple(self.roles)


# The backup and stack sections have their own modules; imported last because they
# build on `setting`.
from builder.manifest import backup_model, stack_model  # noqa: E402
