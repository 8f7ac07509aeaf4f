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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.version import Version

from builder.errors import Location

SCHEMA_VERSION = 1


def setting(default: Any = ..., help: str = "", **kw: Any) -> Any:
    """Declare one manifest setting with its help text."""
    meta = {"help": help}
    if default is ...:
        return field(metadata=meta, **kw)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples / default_factory for mutable defaults")
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------- secrets


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

    url: str = setting(help="where the tarball is downloaded from")
    sha256: str = setting("", help="hex SHA-256 of the tarball; the build refuses any other")
    md5: str = setting(
        "", help="hex MD5, for old tarballs whose publisher gave only that; checked too"
    )
    prefix: str = setting(help="installation prefix, e.g. /opt/ree")
    version: str = setting("", help="upstream version, for tags and logs")
    configure_flags: tuple[str, ...] = setting((), help="extra flags for ./installer or configure")


@dataclass(frozen=True, kw_only=True)
class Nginx:
    """The web front end: nginx in front of the app servers."""

    upstream_role: str = setting(help="role whose app servers nginx proxies to")
    balance: Literal["round_robin", "least_conn", "ip_hash", "fair"] = setting(
        "least_conn", help="upstream balancing; `fair` needs the upstream-fair module"
    )
    listen: int = setting(80, help="HTTP port")
    static_root: str = setting("/srv/app/public", help="document root for static files")
    gzip_static: bool = setting(True, help="serve precompressed .gz files")
    page_cache: bool = setting(True, help="Rails page-cache rewrites: try $uri.html first")
    client_max_body_size: str = setting("20m", help="largest upload nginx accepts")
    maintenance_flag: str = setting(
        "/var/www/maintenance/on",
        help="when this file exists nginx answers 503 with the maintenance page",
    )
    maintenance_page: str = setting(
        "/var/www/maintenance/index.html", help="the page served while in maintenance"
    )
    retry_after: int = setting(300, help="Retry-After seconds sent with 503")
    error_pages: dict[str, str] = setting(
        default_factory=lambda: {"404": "/404.html", "500": "/500.html"},
        help="status code → page under static_root",
    )


@dataclass(frozen=True, kw_only=True)
class Ruby:
    """The Ruby interpreter: Debian packages, or a tarball built into a prefix."""

    source: Literal["debian", "tarball"] = setting("debian", help="where Ruby comes from")
    packages: tuple[str, ...] = setting(
        ("ruby", "ruby-rack", "puma", "ruby-pg"), help="Debian packages (source: debian)"
    )
    tarball: Tarball | None = setting(None, help="source tarball (source: tarball)")
    gems: tuple[str, ...] = setting(
        (), help="gems installed into the tarball Ruby: `name` or `name:version`"
    )


@dataclass(frozen=True, kw_only=True)
class AppServer:
    """A pack of N app-server processes on ports base_port..base_port+N-1."""

    kind: Literal["puma", "mongrel_cluster"] = setting("puma", help="app server")
    count: int = setting(2, help="number of processes")
    base_port: int = setting(8000, help="first port; process i listens on base_port+i")
    bind: str = setting("0.0.0.0", help="address the processes listen on")
    threads: int = setting(4, help="threads per process (puma)")
    environment: str = setting("production", help="RACK_ENV / RAILS_ENV")

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.base_port + i for i in range(self.count))


@dataclass(frozen=True, kw_only=True)
class HbaRule:
    """One pg_hba.conf line."""

    type: Literal["local", "host", "hostssl", "hostnossl"] = setting("host", help="connection type")
    database: str = setting(help="database name, or all")
    user: str = setting(help="role name, or all")
    address: str = setting("", help="CIDR (not for local)")
    method: Literal["scram-sha-256", "md5", "peer", "trust", "reject"] = setting(
        "scram-sha-256", help="authentication method"
    )


@dataclass(frozen=True, kw_only=True)
class PostgreSQL:
    """PostgreSQL with its data directory on instance storage."""

    version: str = setting("15", help="major version (Debian package postgresql-N)")
    port: int = setting(5432, help="TCP port")
    listen_addresses: str = setting("*", help="listen_addresses")
    instance_store: str = setting("ephemeral0", help="block-device-mapping name of the volume")
    mount_point: str = setting("/mnt", help="where the instance store is mounted")
    data_dir: str = setting(
        "/mnt/postgresql/15/main", help="data directory; under mount_point for instance storage"
    )
    hba: tuple[HbaRule, ...] = setting((), help="pg_hba rules added before the defaults")
    settings: dict[str, str] = setting(
        default_factory=dict, help="extra postgresql.conf settings"
    )


@dataclass(frozen=True, kw_only=True)
class Components:
    """Configuration of each component; a role switches components on by name."""

    nginx: Nginx | None = setting(None, help="web front end")
    ruby: Ruby | None = setting(None, help="Ruby interpreter")
    appserver: AppServer | None = setting(None, help="app-server pack")
    postgresql: PostgreSQL | None = setting(None, help="database server")


COMPONENT_NAMES: tuple[str, ...] = ("nginx", "ruby", "appserver", "postgresql")

# --------------------------------------------------------------------- the app


@dataclass(frozen=True, kw_only=True)
class Database:
    """The app's database and the role it connects as."""

    name: str = setting(help="database name")
    user: str = setting(help="role the app connects as")
    password: SecretRef = setting(help="secret store reference; never a literal")
    host_role: str = setting(help="role that runs the database server")
    network: str = setting("10.0.0.0/16", help="CIDR the app servers connect from")


@dataclass(frozen=True, kw_only=True)
class App:
    """The application the servers run."""

    name: str = setting(help="app name; unix user and paths derive from it")
    server_name: str = setting(help="the site's DNS name, e.g. payroll.example.com")
    user: str = setting("app", help="unix user the app servers run as")
    root: str = setting("/srv/app", help="where the app's code lives")
    uploads_dir: str = setting("/var/uploads", help="where uploaded files are kept")
    database: Database = setting(help="the app's database")
    code: Literal["sample", "none"] = setting(
        "sample", help="`sample`: amibake's Rack sample app; `none`: deployed separately"
    )


# ------------------------------------------------------------------- roles


@dataclass(frozen=True, kw_only=True)
class Role:
    """A server role: which components run on an instance started in it."""

    name: str
    components: tuple[str, ...] = setting(help="component names from `components`")
    description: str = setting("", help="what this role is for")
    ports: tuple[int, ...] = setting((), help="extra TCP ports to open (security group)")
    instance_type: str = setting("t3.small", help="EC2 instance type for launch")


# ------------------------------------------------------------------- image


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """How the image is built."""

    distro: Literal["debian"] = setting("debian", help="distribution")
    release: Literal["bookworm"] = setting("bookworm", help="release")
    architecture: Literal["x86_64"] = setting("x86_64", help="CPU architecture")
    volume_size_gib: int = setting(4, help="root volume size")
    boot_mode: Literal["uefi-preferred", "uefi", "legacy-bios"] = setting(
        "uefi-preferred", help="EC2 boot mode"
    )
    login_user: str = setting("admin", help="user that gets the instance's SSH key")
    roles: tuple[str, ...] = setting((), help="roles baked in (default: all)")
    packages: tuple[str, ...] = setting((), help="extra Debian packages")
    name_template: str = setting(
        "{name}-{version}", help="AMI name; {name}, {version}, {arch} are filled in"
    )
    backing: Literal["ebs", "instance-store"] = setting("ebs", help="AMI root device type")


@dataclass(frozen=True, kw_only=True)
class PublishSpec:
    """Where and how AMIs are published."""

    regions: tuple[str, ...] = setting(("us-east-1",), help="first is the home region")
    ssm_prefix: str = setting("/amibake", help="SSM parameter prefix")
    kms_key_ids: dict[str, str] = setting(
        default_factory=dict, help="region → KMS key id to encrypt snapshots with"
    )
    bucket: str = setting("", help="S3 bucket for instance-store bundles")
    keep: int = setting(3, help="versions kept by `amibake prune`")


# ------------------------------------------------------------------ cutover


@dataclass(frozen=True, kw_only=True)
class DbEndpoint:
    """A PostgreSQL connection (libpq keywords)."""

    host: str = setting(help="host name or address")
    port: int = setting(5432, help="port")
    dbname: str = setting(help="database")
    user: str = setting(help="superuser used for the cutover")
    password: SecretRef | None = setting(None, help="secret reference; none for peer/trust")


@dataclass(frozen=True, kw_only=True)
class FilesSync:
    """Uploaded files moved with rsync."""

    source: str = setting(help="old server's directory, `host:/path` for SSH")
    destination: str = setting(help="new server's directory, `host:/path` for SSH")
    transport: Literal["local", "ssh"] = setting("local", help="how rsync reaches the hosts")
    ssh_options: tuple[str, ...] = setting((), help="extra ssh options")


@dataclass(frozen=True, kw_only=True)
class DnsSpec:
    """The record that moves, and who serves it."""

    provider: Literal["route53", "rfc2136"] = setting(help="DNS provider")
    zone: str = setting(help="zone name, e.g. example.com.")
    record: str = setting(help="record name, e.g. payroll.example.com.")
    new_address: str = setting(help="address of the new site")
    low_ttl: int = setting(60, help="TTL set ahead of the window")
    hosted_zone_id: str = setting("", help="Route53 zone id")
    server: str = setting("", help="RFC 2136 primary, host[:port]")
    tsig_key: SecretRef | None = setting(None, help="RFC 2136 TSIG key (name:algorithm:secret)")
    nameservers: tuple[str, ...] = setting(
        (), help="authoritative servers to verify against, host[:port]; default: the zone's NS"
    )


@dataclass(frozen=True, kw_only=True)
class Notice:
    """What users are told."""

    contact: str = setting(help="whom to contact")
    lead_days: int = setting(14, help="days between the notice and the window")


@dataclass(frozen=True, kw_only=True)
class Cutover:
    """Moving the live app onto the new servers."""

    strategy: Literal["dump", "replicate"] = setting("replicate", help="database strategy")
    window_start: str = setting(help="ISO 8601 with timezone, e.g. 2026-12-05T23:59-05:00")
    window_minutes: int = setting(30, help="announced length of the outage window")
    timezone: str = setting("UTC", help="IANA zone used in the notice")
    old_db: DbEndpoint = setting(help="the database being moved")
    new_db: DbEndpoint = setting(help="where it moves to")
    files: FilesSync | None = setting(None, help="uploaded files")
    dns: DnsSpec = setting(help="the record to switch")
    notice: Notice = setting(help="user notice")
    old_site: str = setting(help="URL of the old site (maintenance switch, rollback)")
    new_site: str = setting(help="URL of the new site for smoke tests")
    old_web: str = setting("local", help="`local` or `ssh:user@host` where the old nginx runs")
    old_web_ssh_options: tuple[str, ...] = setting((), help="extra ssh options for old_web")
    checksum_when: Literal["before_switch", "after_switch"] = setting(
        "before_switch", help="when per-table content checksums run"
    )
    smoke_paths: tuple[str, ...] = setting(("/health", "/"), help="paths that must answer 200")
    dump_format: Literal["directory", "stream"] = setting(
        "directory", help="dump strategy: `pg_dump -Fd -j` + `pg_restore -j`, or one stream"
    )
    dump_jobs: int = setting(2, help="parallel jobs for pg_dump -Fd / pg_restore -j")
    publisher: str = setting(
        "", help="old database as the new server reaches it, host[:port]; default old_db"
    )
    catch_up_timeout: int = setting(600, help="seconds to wait for the subscriber to catch up")


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A whole manifest file."""

    amibake: int = setting(help=f"manifest schema version (currently {SCHEMA_VERSION})")
    name: str = setting(help="image name, [a-z0-9-]")
    version: Version = setting(help="image version (PEP 440, e.g. 1.2.0)")
    description: str = setting("", help="free text")
    app: App = setting(help="the application")
    components: Components = setting(help="component configuration")
    roles: dict[str, Role] = setting(help="role name → role")
    image: ImageSpec = setting(default_factory=ImageSpec, help="how the image is built")
    publish: PublishSpec = setting(default_factory=PublishSpec, help="where it is published")
    cutover: Cutover | None = setting(None, help="the move to the new servers")

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
