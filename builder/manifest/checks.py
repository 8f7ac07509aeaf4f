"""Checks across settings, run once every value has the right type.

Each check takes the manifest and `report(path, message)`; the path is a
dotted YAML path, so the problem points at the line that set it. Checks of a
single value (ranges, formats) are in field_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

from builder.manifest.field_checks import NAME
from builder.manifest.model import COMPONENT_NAMES, Manifest
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
    for code, page in nginx.error_pages.items():
        path = f"components.nginx.error_pages.{code}"
        if not (len(code) == 3 and code.isdigit() and code[0] in "45"):
            report(path, f"error page status {code!r} must be a 4xx or 5xx HTTP status")
        elif not page.startswith("/"):
            report(path, f"error page {page!r} must start with '/' (a path under static_root)")


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
    data, mount = PurePosixPath(pg.data_dir), PurePosixPath(pg.mount_point)
    if data == mount or not data.is_relative_to(mount):
        report("components.postgresql.data_dir",
               f"data_dir {pg.data_dir!r} must be under mount_point {pg.mount_point!r}")


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
    if m.image.backing == "instance-store" and not m.publish.bucket:
        report("image.backing", "instance-store images need publish.bucket for the bundle")


CHECKS: tuple[Callable[[Manifest, Report], None], ...] = (
    check_roles, check_references, check_ports, check_ruby, check_web, check_database,
    check_login_user, check_publish,
)


def run_checks(m: Manifest, report: Report) -> None:
    for check in CHECKS:
        check(m, report)
