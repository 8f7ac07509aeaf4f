"""nginx: static root, page cache, proxy to the app servers, maintenance switch."""

from __future__ import annotations

import posixpath
import re

from builder.manifest.model import Manifest, Nginx, Role
from builder.render import quoting
from builder.render.common import SETUP_DIR, hosts_var, manifest_error, source_name
from builder.render.fragment import File, Fragment
from builder.render.quoting import Unquotable
from builder.render.templates import read_static, render_template

UPSTREAM_NAME = "app_servers"
UPSTREAM_FILE = "/etc/nginx/amibake/upstream-servers.conf"
#: written by setup when the upstream is one name: resolver + the name (see _port_map)
RESOLVE_FILE = "/etc/nginx/amibake/upstream-resolve.conf"
#: included by nginx.conf: a glob, so no file (the upstream block) is valid too
RESOLVE_GLOB = "/etc/nginx/amibake/upstream-resolve*.conf"
#: how long nginx trusts a resolved name before asking again
RESOLVE_VALID = "5s"
HEX = "0123456789abcdef"
SETUP = f"{SETUP_DIR}/nginx.sh"
FAIR_PACKAGE = "libnginx-mod-http-upstream-fair"
_BALANCE = {"round_robin": "", "least_conn": "least_conn", "ip_hash": "ip_hash", "fair": "fair"}


#: the notice banner's sub_filter file (`amibake cutover banner-on`), beside the
#: maintenance flag: the cutover writes it where it writes the flag
BANNER_FILE = "amibake-banner.conf"


def banner_conf(nginx: Nginx) -> str:
    return posixpath.join(posixpath.dirname(nginx.maintenance_flag), BANNER_FILE)


def render(manifest: Manifest, role: Role) -> Fragment:
    nginx = manifest.components.nginx
    if nginx is None:
        raise manifest_error(manifest, f"roles.{role.name}.components", "nginx is not configured")
    appserver = manifest.components.appserver
    if appserver is None:
        raise manifest_error(
            manifest, "components.nginx.upstream_role",
            "nginx proxies to app servers, but components.appserver is not configured",
        )
    upstream_var = hosts_var(nginx.upstream_role)
    if not re.fullmatch(r"[0-9]{1,15}[kKmMgG]?", nginx.client_max_body_size):
        raise Unquotable(f"client_max_body_size {nginx.client_max_body_size!r} is not an nginx "
                         "size (digits and an optional k, m or g)")
    quoting.nginx_path(nginx.maintenance_page)  # written by cloud-init, served by nginx
    maintenance_root, maintenance_file = posixpath.split(nginx.maintenance_page)
    error_page_lines = _error_pages(nginx.error_pages)
    conf = render_template(
        "nginx/nginx.conf.j2",
        app_name=manifest.app.name,
        manifest_file=source_name(manifest),
        nginx=nginx,
        server_name=manifest.app.server_name,
        upstream_name=UPSTREAM_NAME,
        upstream_file=UPSTREAM_FILE,
        balance_directive=_balance(nginx.balance),
        resolve_glob=RESOLVE_GLOB,
        port_map=_port_map(appserver.ports),
        maintenance_root=maintenance_root,
        maintenance_file=maintenance_file,
        banner_glob=banner_conf(nginx).removesuffix(".conf") + "*.conf",
        error_page_lines=error_page_lines,
    )
    servers = render_template(
        "nginx/upstream-servers.conf.j2", ports=appserver.ports, upstream_var=upstream_var
    )
    setup = render_template(
        "nginx/setup.sh.j2",
        upstream_role=nginx.upstream_role,
        upstream_var=upstream_var,
        upstream_file=UPSTREAM_FILE,
        upstream_name=UPSTREAM_NAME,
        ports=appserver.ports,
        resolve_file=RESOLVE_FILE,
        resolve_valid=RESOLVE_VALID,
    )
    packages = ["nginx-light"]
    if nginx.balance == "fair":
        packages.append(FAIR_PACKAGE)
    files = [
        File("/etc/nginx/nginx.conf", conf),
        File(UPSTREAM_FILE, servers),
        File(SETUP, setup, mode=0o755),
    ]
    # When the page is itself the switch (Capistrano's public/system/maintenance.html),
    # it is written by whoever starts the maintenance, never baked.
    if nginx.maintenance_page != nginx.maintenance_flag:
        files.append(File(nginx.maintenance_page, read_static("app/maintenance.html")))
    return Fragment(
        component="nginx",
        packages=tuple(packages),
        files=tuple(files),
        services=("nginx.service",),
        setup=(SETUP,),
    )


def _port_map(ports: tuple[int, ...]) -> list[tuple[str, int]]:
    """`map $request_id` lines that spread requests evenly over the app ports: the request
    id's last hex digit d goes to port d mod N (the last port is the default)."""
    lines = []
    for index, port in enumerate(ports[:-1]):
        digits = "".join(d for i, d in enumerate(HEX) if i % len(ports) == index)
        lines.append((f"~[{digits}]$", port))
    return [*lines, ("default", ports[-1])]


def _balance(balance: str) -> str:
    if balance not in _BALANCE:
        raise Unquotable(f"{balance!r} is not an upstream balancing method")
    return _BALANCE[balance]


def _error_pages(pages: dict[str, str]) -> list[str]:
    """`error_page` lines; the 500 page also covers a down upstream (502, 504)."""
    lines = []
    for code, page in sorted(pages.items()):
        if not re.fullmatch(r"[345][0-9][0-9]", code):
            raise Unquotable(f"{code!r} is not an HTTP status code (300-599)")
        codes = [code]
        if code == "500":
            codes += [c for c in ("502", "504") if c not in pages]
        lines.append(f"error_page {' '.join(codes)} {quoting.nginx(page)};")
    return lines
