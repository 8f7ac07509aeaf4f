"""Roles find each other by name (issue 12, part 4): the web role's nginx resolves the app
role's private name per request, so replaced app servers are followed without a reload.

Real parts: the rendered nginx.conf and setup script, the real nginx, Knot answering the
name (updated by RFC 2136 with TSIG, as Route 53 changes a record), two app server
stand-ins on 127.0.0.1 and 127.0.0.2 at the same ports."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.manifest.model import DnsSpec
from builder.ports import free_port
from builder.render import image_content
from builder.render.nginx import RESOLVE_FILE, UPSTREAM_FILE, _port_map
from builder.wait import NotYet, Waiter, wait_for
from tests.cutover_fixtures import NEW_ADDR, OLD_ADDR, Knot, knot  # noqa: F401 (fixture)
from tests.test_render_nginx import body, install, running_nginx

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"
NAME = "payroll.example.com"  # the Knot fixture's record, standing in for app.<stack>.internal
FOLLOW = Waiter("nginx to follow the new address", attempts=200, interval=0.25, timeout=60)


def _two_free_ports() -> int:
    """A port P with P and P+1 free on 127.0.0.1 and 127.0.0.2 (two app server ports)."""
    for _ in range(50):
        port = free_port()
        try:
            for address in (OLD_ADDR, NEW_ADDR):
                for p in (port, port + 1):
                    with socket.socket() as s:
                        s.bind((address, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _manifest(tmp_path: Path, base_port: int) -> Path:
    text = SEED.read_text()
    old = "    count: 3                   # ports 8000, 8001, 8002: amibake-app@<port>.service\n" \
          "    base_port: 8000\n"
    assert old in text
    path = tmp_path / "smallpayroll.yaml"
    path.write_text(text.replace(old, f"    count: 2\n    base_port: {base_port}\n"))
    return path


@contextmanager
def app_server(address: str, port: int, who: str) -> Iterator[None]:
    """An app server stand-in answering every GET with `who` and its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            data = f"{who} {port}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _setup(root: Path, hosts: str, resolvers: str) -> subprocess.CompletedProcess[str]:
    """Run the rendered setup script against the files under `root`."""
    script = root / "nginx.sh"
    env = {"PATH": os.environ["PATH"], "AMIBAKE_HOSTS_ENV": str(root / "hosts.env"),
           "AMIBAKE_UPSTREAM_FILE": str(root / UPSTREAM_FILE.lstrip("/")),
           "AMIBAKE_RESOLVERS": resolvers, "AMIBAKE_RESOLV_CONF": str(root / "resolv.conf"),
           "AMIBAKE_SYSTEMCTL": "true"}
    (root / "hosts.env").write_text(f'AMIBAKE_HOSTS_APP="{hosts}"\n')
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                          timeout=30)


def _install(tmp_path: Path, manifest: Path, listen: int) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    conf = install(manifest, root, listen=listen, backend=free_port())
    files = {f.path: f for f in image_content(load_manifest(manifest)).files}
    (root / "nginx.sh").write_bytes(files["/usr/lib/amibake/setup/nginx.sh"].content)
    return root, conf


def test_port_map_spreads_request_ids_over_every_port() -> None:
    assert _port_map((8000,)) == [("default", 8000)]
    assert _port_map((8000, 8001, 8002)) == [
        ("~[0369cf]$", 8000), ("~[147ad]$", 8001), ("default", 8002)]


def test_one_name_is_resolved_per_request_addresses_stay_an_upstream(tmp_path: Path) -> None:
    root, _ = _install(tmp_path, _manifest(tmp_path, 8000), free_port())
    resolve = root / RESOLVE_FILE.lstrip("/")
    (root / "resolv.conf").write_text("# dhcp\nnameserver 10.0.0.2\nnameserver fd00::2\n"
                                      "nameserver bad;name\nsearch ec2.internal\n")
    done = _setup(root, "app.smallpayroll.internal", "")
    assert done.returncode == 0, done.stderr
    lines = resolve.read_text().splitlines()[1:]
    assert lines == ["resolver 10.0.0.2 [fd00::2] valid=5s ipv6=off;", "resolver_timeout 5s;",
                     'set $amibake_upstream "app.smallpayroll.internal:$amibake_app_port";']
    # addresses (several, or one) go back to the upstream block: the resolve file is gone
    for hosts in ("10.0.1.5 10.0.1.6", "10.0.1.5", "fd00::5"):
        done = _setup(root, hosts, "")
        assert done.returncode == 0, done.stderr
        assert not resolve.exists()
    # a name without any nameserver: resolved once at start, and said so
    (root / "resolv.conf").write_text("")
    done = _setup(root, "app.smallpayroll.internal", "")
    assert done.returncode == 0 and not resolve.exists()
    assert "resolved once, at start" in done.stderr
    # a host that is neither a name nor an address never reaches nginx's config
    for bad in ("app;evil", "-x", "a..b", "$(id)"):
        done = _setup(root, bad, "10.0.0.2")
        assert done.returncode == 1 and "refusing app server host" in done.stderr
        assert not resolve.exists()


def test_nginx_follows_the_app_name_without_a_reload(knot: Knot,  # noqa: F811
                                                     tmp_path: Path) -> None:
    from builder.cutover.dns.rfc2136 import Rfc2136Dns

    base = _two_free_ports()
    listen = free_port()
    root, conf = _install(tmp_path, _manifest(tmp_path, base), listen)
    done = _setup(root, NAME, f"{OLD_ADDR}:{knot.port}")
    assert done.returncode == 0, done.stderr
    check = subprocess.run(["nginx", "-t", "-p", str(root), "-c", str(conf),
                            "-e", str(root / "error.log")], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr
    record = Rfc2136Dns(DnsSpec(provider="rfc2136", zone="example.com.", record=f"{NAME}.",
                                new_address=NEW_ADDR, server=f"{OLD_ADDR}:{knot.port}"),
                        knot.key)
    assert record.get().address == OLD_ADDR
    with app_server(OLD_ADDR, base, "old"), app_server(OLD_ADDR, base + 1, "old"), \
            app_server(NEW_ADDR, base, "new"), app_server(NEW_ADDR, base + 1, "new"), \
            running_nginx(conf, root, listen):
        master = (root / "run/nginx.pid").read_text().strip()
        seen = {body(listen, f"/employees?{i}")[1].decode() for i in range(40)}
        assert seen == {f"old {base}", f"old {base + 1}"}  # both app ports, the old server

        record.set(NEW_ADDR, 5)  # the app server is replaced: its name moves

        def follows() -> None:
            answer = body(listen, "/employees")[1].decode()
            if not answer.startswith("new "):
                raise NotYet(f"still {answer!r}")
        wait_for(follows, FOLLOW)
        seen = {body(listen, f"/employees?{i}")[1].decode() for i in range(40)}
        assert seen == {f"new {base}", f"new {base + 1}"}
        # the same nginx, never reloaded
        assert (root / "run/nginx.pid").read_text().strip() == master
        log = (root / "error.log").read_text() + (root / "nginx.stderr").read_text()
        assert "reconfiguring" not in log and "SIGHUP" not in log


@pytest.mark.parametrize("hosts", ["app.smallpayroll.internal", "10.0.1.5 10.0.1.6"])
def test_nginx_accepts_both_modes(hosts: str, tmp_path: Path) -> None:
    root, conf = _install(tmp_path, SEED, free_port())
    done = _setup(root, hosts, "10.0.0.2")
    assert done.returncode == 0, done.stderr
    check = subprocess.run(["nginx", "-t", "-p", str(root), "-c", str(conf),
                            "-e", str(root / "error.log")], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr
