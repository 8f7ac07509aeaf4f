"""Checks across settings, run once every value has the right type.

Each check takes the manifest and `report(path, message)`; the path is a
dotted YAML path, so the problem points at the line that set it. Checks of a
single value (ranges, formats) are declared with the field in model.py
(field_checks.py). Every section is checked here, the cutover's included, so
`amibake validate` reports every problem at once; only resolving secrets is
left to run time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

from builder.manifest import field_checks as fc
from builder.manifest import stack_checks
from builder.manifest.backup_model import check_backup
from builder.manifest.field_checks import NAME, template
from builder.manifest.model import COMPONENT_NAMES, DnsSpec, Manifest
from builder.manifest.paths import under
from builder.manifest.scalars import did_you_mean

Report = Callable[[str, str], None]


def check_roles(m: Manifest, report: Report) -> None:
    if not m.roles:
        report("roles", "at least one role is needed")
    for name, role in m.roles.items():
        if not NAME.fullmatch(name):
            report(f"roles.{name}", f"role name {name!r} must be lower-case letters, digits "
                                    "and '-', starting with a letter or digit")
        path = f"roles.{name}.components"
        if not role.components:
            report(path, f"role {name!r} has no components")
        seen: set[str] = set()
        for i, component in enumerate(role.components):
            item = f"{path}.{i}"
            if component not in COMPONENT_NAMES:
                report(item, f"unknown component {component!r} in role {name!r}"
                             + did_you_mean(component, COMPONENT_NAMES))
            elif component in seen:
                report(item, f"component {component!r} is listed twice in role {name!r}")
            elif getattr(m.components, component) is None:
                report(item, f"role {name!r} uses component {component!r}, which is not "
                             f"configured under components (write `{component}: {{}}` "
                             "for its defaults)")
            seen.add(component)


def _runs(m: Manifest, role: str, component: str) -> bool:
    return role in m.roles and component in m.roles[role].components


def _dangling(m: Manifest, report: Report, path: str, role: str, what: str) -> bool:
    if role in m.roles:
        return False
    known = f" (roles: {', '.join(m.roles)})" if m.roles else " (no roles are defined)"
    report(path, f"{what} {role!r} is not a role of this manifest"
                 + (did_you_mean(role, tuple(m.roles)) or known))
    return True


def check_references(m: Manifest, report: Report) -> None:
    nginx = m.components.nginx
    if nginx is not None:
        path = "components.nginx.upstream_role"
        if not _dangling(m, report, path, nginx.upstream_role, "upstream role") and \
                not _runs(m, nginx.upstream_role, "appserver"):
            report(path, f"upstream role {nginx.upstream_role!r} runs no appserver")
    db = m.app.database
    path = "app.database.host_role"
    if not _dangling(m, report, path, db.host_role, "database host role") and \
            not _runs(m, db.host_role, "postgresql"):
        report(path, f"database host role {db.host_role!r} does not run postgresql")
    for i, role in enumerate(m.image.roles):
        _dangling(m, report, f"image.roles.{i}", role, "image role")


def _listeners(m: Manifest, role: str) -> Iterator[tuple[int, str, str]]:
    """(port, who, path) of everything that listens in `role`."""
    c, components = m.components, m.roles[role].components
    if c.nginx is not None and "nginx" in components:
        yield c.nginx.listen, "nginx", "components.nginx.listen"
    if c.appserver is not None and "appserver" in components:
        for port in c.appserver.ports:
            yield port, f"appserver process {port}", "components.appserver.base_port"
    if c.postgresql is not None and "postgresql" in components:
        yield c.postgresql.port, "postgresql", "components.postgresql.port"
    for i, port in enumerate(m.roles[role].ports):
        yield port, f"roles.{role}.ports", f"roles.{role}.ports.{i}"


def check_ports(m: Manifest, report: Report) -> None:
    app = m.components.appserver
    if app is not None and app.base_port + app.count - 1 > 65535:
        report("components.appserver.count", f"{app.count} appserver processes from port "
                                             f"{app.base_port} go past port 65535")
        return
    for name in m.roles:
        owners: dict[int, str] = {}
        for port, who, path in _listeners(m, name):
            if port in owners:
                report(path, f"port {port} in role {name!r} is used by both {owners[port]} "
                             f"and {who}")
            else:
                owners[port] = who


def check_ruby(m: Manifest, report: Report) -> None:
    ruby = m.components.ruby
    if ruby is None:
        return
    if ruby.source == "tarball" and ruby.tarball is None:
        report("components.ruby.source", "ruby source 'tarball' needs a `tarball:` section "
                                         "(url, sha256 or md5, prefix)")
    if ruby.tarball is not None and not (ruby.tarball.sha256 or ruby.tarball.md5):
        report("components.ruby.tarball", "the tarball needs a checksum: sha256 (or md5 when "
                                          "that is all its publisher gave)")
    if ruby.source == "debian" and ruby.tarball is not None:
        report("components.ruby.tarball", "ruby.tarball is set but ruby.source is 'debian'")


def check_web(m: Manifest, report: Report) -> None:
    nginx = m.components.nginx
    if nginx is None:
        return
    for code in nginx.error_pages:
        if code in ("503",):
            report(f"components.nginx.error_pages.{code}",
                   "503 is the maintenance page's status (components.nginx.maintenance_page)")


def check_database(m: Manifest, report: Report) -> None:
    pg = m.components.postgresql
    if pg is None:
        return
    for i, rule in enumerate(pg.hba):
        path = f"components.postgresql.hba.{i}"
        if rule.type == "local" and rule.address:
            report(f"{path}.address", "a `local` hba rule takes no address")
        elif rule.type != "local" and not rule.address:
            report(path, f"a `{rule.type}` hba rule needs an address (CIDR)")
        if rule.type != "local" and rule.method != "reject" and not rule.allow_world and \
                world_open(rule.address):
            report(f"{path}.address", f"a `{rule.method}` rule from {rule.address} lets the whole "
                   "internet try to log in; narrow the address, or set allow_world: true on "
                   "this rule if that is meant")
    # the field checks already refused '..', so the paths compare as written
    if not under(pg.data_dir, pg.mount_point):
        report("components.postgresql.data_dir",
               f"data_dir {pg.data_dir!r} must be under mount_point {pg.mount_point!r}")
    for key in pg.settings:
        reason = OWNED_SETTINGS.get(key)
        if reason:
            report(f"components.postgresql.settings.{key}",
                   f"postgresql.settings.{key} cannot be set here: {reason}")


#: postgresql.conf settings a manifest may not set, and why.
OWNED_SETTINGS: dict[str, str] = {
    **dict.fromkeys(
        ("archive_command", "restore_command", "archive_cleanup_command",
         "recovery_end_command", "ssl_passphrase_command"),
        "it runs a shell command as the postgres user"),
    **dict.fromkeys(
        ("shared_preload_libraries", "local_preload_libraries", "session_preload_libraries",
         "dynamic_library_path", "jit_provider", "archive_library"),
        "it loads shared libraries into the server"),
    **dict.fromkeys(
        ("data_directory", "hba_file", "ident_file", "config_file", "external_pid_file",
         "include", "include_dir", "include_if_exists"),
        "amibake places the cluster's files (data_dir is components.postgresql.data_dir)"),
    **dict.fromkeys(
        ("unix_socket_directories", "unix_socket_group", "unix_socket_permissions"),
        "amibake's boot scripts and the cutover connect through Debian's socket"),
    "listen_addresses": "amibake sets it from components.postgresql.listen_addresses",
    "port": "amibake sets it from components.postgresql.port",
}

#: Networks with a prefix shorter than this hold "the world" for these checks.
WORLD_PREFIX = {4: 8, 6: 16}


def world_open(cidr: str) -> bool:
    """True for 0.0.0.0/0, ::/0 and anything shorter than /8 (IPv4) or /16 (IPv6)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return net.prefixlen < WORLD_PREFIX[net.version]


def check_app_network(m: Manifest, report: Report) -> None:
    db = m.app.database
    if world_open(db.network) and not db.allow_world:
        report("app.database.network", f"database.network {db.network} opens the database (and "
               "its security group) to the whole internet; narrow it to the app servers' "
               "network, or set app.database.allow_world: true if that is meant")


#: Accounts a Debian image already has (base-passwd) or its packages create.
SYSTEM_USERS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "_apt", "messagebus",
    "systemd-network", "systemd-timesync", "sshd", "postgres",
})


def check_login_user(m: Manifest, report: Report) -> None:
    user = m.image.login_user
    if user in SYSTEM_USERS:
        report("image.login_user", f"login_user {user!r} is a system account of the image; "
               "pick a name of your own, such as admin")
    elif user == m.app.user:
        report("image.login_user", f"login_user {user!r} is also app.user: the login user "
               "gets sudo, the app's user must not")


def check_publish(m: Manifest, report: Report) -> None:
    if not m.publish.regions:
        report("publish.regions", "at least one region is needed")
    seen: set[str] = set()
    for i, region in enumerate(m.publish.regions):
        if region in seen:
            report(f"publish.regions.{i}", f"region {region!r} is listed twice")
        seen.add(region)
    for region in m.publish.kms_key_ids:
        if region not in seen:
            report(f"publish.kms_key_ids.{region}",
                   f"KMS key for {region!r}, which is not in publish.regions")
    if m.image.backing == "instance-store":
        check_instance_store(m, report)
    name = m.image.name_template.format(name=m.name, version=str(m.version), arch="x86_64") \
        if template(m.image.name_template) is None else ""
    if len(name) > 128:
        report("image.name_template", f"the AMI name would be {len(name)} characters long "
               "(EC2 allows 128)")


#: EC2's size limit for an instance-store root device, in GiB.
INSTANCE_STORE_MAX_GIB = 10


def check_instance_store(m: Manifest, report: Report) -> None:
    """What EC2 accepts for an instance-store AMI, known before anything is built."""
    if not m.publish.bucket:
        report("image.backing", "instance-store images need publish.bucket for the bundle")
    if m.image.volume_size_gib > INSTANCE_STORE_MAX_GIB:
        report("image.volume_size_gib", f"an instance-store root device holds at most "
               f"{INSTANCE_STORE_MAX_GIB} GiB (volume_size_gib is {m.image.volume_size_gib}); "
               "lower it, or use backing: ebs")
    if m.publish.kms_key_ids:
        report("publish.kms_key_ids", "kms_key_ids encrypt EBS snapshots; an instance-store "
               "AMI has none (its bundle is already encrypted for EC2): remove them, or use "
               "backing: ebs")
    if m.image.boot_mode == "uefi" and m.image.architecture == "x86_64":
        report("image.boot_mode", "instance-store AMIs boot x86_64 instances with legacy BIOS; "
               "use boot_mode uefi-preferred (the baked disk boots both ways), or backing: ebs")


def check_site_address(dns: DnsSpec, report: Report) -> None:
    """A host-name new_address makes the record a CNAME: not at the zone's apex (which
    holds SOA and NS, and a CNAME shares its name with nothing), not to itself."""
    if not fc.is_host_name(dns.new_address):
        return
    record, target = fc.absolute_name(dns.record), fc.absolute_name(dns.new_address)
    if record == fc.absolute_name(dns.zone):
        report("cutover.dns.new_address",
               f"{dns.new_address} is a host name, so {dns.record} would become a CNAME, "
               f"and a CNAME cannot be at the zone's apex ({dns.zone} holds SOA and NS): "
               "move the site to a sub-name such as www." + dns.zone + " (and redirect the "
               "apex there), or point the apex by hand with a provider's alias record "
               "(Route 53 alias to the load balancer)")
    elif record == target:
        report("cutover.dns.new_address", f"{dns.record} would be a CNAME to itself")


def check_cutover(m: Manifest, report: Report) -> None:
    """What the cutover needs beyond each value's own check (secrets resolve at run time)."""
    cut = m.cutover
    if cut is None:
        return
    if m.components.nginx is None:
        report("cutover", "the cutover needs components.nginx (its maintenance flag and page)")
    dns = cut.dns
    if dns.provider == "route53" and not dns.hosted_zone_id:
        report("cutover.dns", "dns.hosted_zone_id is required for route53 (e.g. Z0123456789)")
    if dns.provider == "rfc2136" and (not dns.server or dns.tsig_key is None):
        report("cutover.dns", "rfc2136 needs dns.server and dns.tsig_key "
               "(server: host[:port] of the primary; tsig_key: {ssm: NAME})")
    check_site_address(dns, report)
    app_user = m.app.database.user
    if app_user in (cut.old_db.user, cut.new_db.user):
        report("app.database.user", f"the app role {app_user!r} is also the cutover's "
               "superuser; the freeze would lock the cutover out (give the cutover its own "
               "superuser in cutover.old_db.user / new_db.user)")
    if cut.receive is not None:
        if cut.new_db.user == "postgres" or cut.new_db.password is None:
            report("cutover.receive", "the db role creates new_db.user as the cutover's "
                   "login: give it its own name (not postgres) and new_db.password")
        net = cut.receive.from_address
        if "/" in net and net.rsplit("/", 1)[1] not in ("32", "128"):
            report("cutover.receive.from_address", f"{net!r} is wider than one address "
                   "(a superuser login: use the cutover host's /32 or /128)")
    files = cut.files
    if files is not None and all(":" in p for p in (files.source, files.destination)):
        report("cutover.files.destination", "rsync copies between one remote side and this "
               "host: source and destination cannot both be host:/path")


def cutover_problems(m: Manifest) -> list[tuple[str, str]]:
    """(dotted path, message) of every cutover problem: for callers that
    build a manifest in code rather than loading it."""
    found: list[tuple[str, str]] = []
    check_cutover(m, lambda path, message: found.append((path, message)))
    return found


def check_app_code(m: Manifest, report: Report) -> None:
    """`app.code` as a mapping: exactly one source, with what it needs."""
    code = m.app.code
    if isinstance(code, str):
        return
    given = [k for k in ("path", "git", "tarball") if getattr(code, k)]
    if len(given) != 1:
        report("app.code", "app.code needs exactly one of path, git or tarball"
                           + (f" (got {', '.join(given)})" if given else ""))
        return
    if code.git and not code.ref:
        report("app.code.git", "app.code.git needs `ref:` (a tag, branch or commit)")
    if code.ref and not code.git:
        report("app.code.ref", "app.code.ref goes with `git:`")
    if code.tarball and not code.sha256:
        report("app.code.tarball", "app.code.tarball needs `sha256:` (checked before unpacking)")
    if code.sha256 and not code.tarball:
        report("app.code.sha256", "app.code.sha256 goes with `tarball:`")


CHECKS: tuple[Callable[[Manifest, Report], None], ...] = (
    check_roles, check_references, check_ports, check_ruby, check_web, check_database,
    check_app_network, check_app_code, check_login_user, check_publish, check_cutover, check_backup,
    stack_checks.check_instance_storage, stack_checks.check_stack,
)


def run_cross_checks(m: Manifest, report: Report) -> None:
    for check in CHECKS:
        check(m, report)
