"""The rendered nginx config with the real nginx: `nginx -t`, then served for real.

The config is installed under a temporary root: absolute paths amibake renders
(/etc/nginx/amibake, /srv, /var/www, logs, pid) are moved under it; nginx's own
mime.types and modules-enabled (upstream-fair, from libnginx-mod-http-upstream-fair)
are the host's.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.ports import free_port
from builder.render import image_content
from builder.render.app import own_app
from builder.render.nginx import UPSTREAM_FILE
from tests.bake_fixture import rack_seed
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
MOVED = ("/etc/nginx/amibake", "/srv", "/var/www", "/var/log/nginx", "/run/nginx.pid")


def install(manifest_path: Path, root: Path, *, listen: int, backend: int) -> Path:
    """Write the image's nginx-related files under `root`; return the config path."""
    manifest = load_manifest(manifest_path)
    if own_app(manifest):  # the Rails app's public/ is only in its app layer: the Rack form
        manifest = rack_seed(manifest)
    files = {f.path: f for f in image_content(manifest).files}
    for path, file in files.items():
        if path.startswith(("/etc/nginx/", "/srv/", "/var/www/")):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
    conf = files["/etc/nginx/nginx.conf"].content.decode()
    for prefix in MOVED:
        conf = conf.replace(prefix, f"{root}{prefix}")
    nginx = manifest.components.nginx
    assert nginx is not None
    conf = conf.replace(f"listen {nginx.listen} default_server;",
                        f"listen 127.0.0.1:{listen} default_server;")
    conf = conf.replace("user www-data;", "user root;")  # the temp root is private to root
    (root / "modules").symlink_to("/usr/lib/nginx/modules")  # load_module is prefix-relative
    (root / "var/log/nginx").mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    (root / UPSTREAM_FILE.lstrip("/")).write_text(f"server 127.0.0.1:{backend};\n")
    path = root / "etc/nginx/nginx.conf"
    path.write_text(conf)
    return path


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_nginx_accepts_the_rendered_config(manifest_path: Path, tmp_path: Path) -> None:
    conf = install(manifest_path, tmp_path, listen=free_port(), backend=free_port())
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: an upstream-fair directive without the module is refused."""
    conf = install(MANIFESTS[0], tmp_path, listen=free_port(), backend=free_port())
    text = conf.read_text().replace("include /etc/nginx/modules-enabled/*.conf;", "")
    conf.write_text(text.replace("least_conn;", "fair;"))
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert 'unknown directive "fair"' in result.stderr


class Backend(http.server.BaseHTTPRequestHandler):
    """An app server stand-in: echoes the request headers; /missing is a 404."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"app's own 404")
            return
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def backend() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_nginx(conf: Path, root: Path, port: int) -> Iterator[None]:
    with serving(["nginx", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log"),
                  "-g", "daemon off;"], port, root / "nginx.stderr", stop=signal.SIGQUIT):
        yield


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": "payroll.example.com", **(headers or {})})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def body(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": "payroll.example.com", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, {k.lower(): v for k, v in response.getheaders()}


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_nginx_serves_the_seed_behaviour(manifest_path: Path, tmp_path: Path) -> None:
    manifest = load_manifest(manifest_path)
    nginx = manifest.components.nginx
    assert nginx is not None
    port = free_port()
    public = tmp_path / nginx.static_root.lstrip("/")
    with backend() as app_port:
        conf = install(manifest_path, tmp_path, listen=port, backend=app_port)
        (public / "cached.html").write_text("page cache hit\n")
        (public / "style.css").write_text("body { color: black }\n" * 50)
        import gzip as _gzip

        (public / "style.css.gz").write_bytes(_gzip.compress((public / "style.css").read_bytes()))
        with running_nginx(conf, tmp_path, port):
            # Proxied to the app with the seed's headers.
            status, data, _ = body(port, "/employees", {"X-Forwarded-For": "198.51.100.7"})
            assert status == 200
            seen = json.loads(data)
            assert seen["path"] == "/employees"
            assert seen["headers"]["Host"] == "payroll.example.com"
            assert seen["headers"]["X-Real-IP"] == "127.0.0.1"
            assert seen["headers"]["X-Forwarded-For"] == "198.51.100.7, 127.0.0.1"
            # Page cache: /cached is served from cached.html without the app.
            status, data, _ = body(port, "/cached")
            assert (status, data) == (200, b"page cache hit\n")
            # gzip_static: the precompressed file for a client that accepts gzip.
            status, data, headers = body(port, "/style.css", {"Accept-Encoding": "gzip"})
            assert status == 200 and headers.get("content-encoding") == "gzip"
            assert data == (public / "style.css.gz").read_bytes()
            # The app's 404 becomes the static 404 page.
            status, data, _ = body(port, "/missing")
            assert status == 404 and b"Page not found" in data
            # Maintenance switch: 503, the maintenance page, Retry-After.
            flag = tmp_path / nginx.maintenance_flag.lstrip("/")
            page = tmp_path / nginx.maintenance_page.lstrip("/")
            flag.parent.mkdir(parents=True, exist_ok=True)
            if flag == page:  # 2010: the page is the switch (Capistrano's maintenance.html)
                page.write_text("<h1>Down for maintenance</h1>\n")
            else:
                flag.write_text("")
            status, data, headers = body(port, "/employees")
            assert status == 503
            assert b"Down for maintenance" in data
            assert headers["retry-after"] == str(nginx.retry_after)
            flag.unlink()
            assert get(port, "/employees").status == 200
    # The app server down: the static 500 page (for 502).
    (tmp_path / UPSTREAM_FILE.lstrip("/")).write_text(f"server 127.0.0.1:{free_port()};\n")
    with running_nginx(conf, tmp_path, port):
        status, data, _ = body(port, "/employees")
        assert status == 502 and b"Something went wrong" in data


def test_nginx_binary_is_real() -> None:
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=True).stderr
    assert "http_gzip_static_module" in out
    assert os.path.exists("/usr/lib/nginx/modules/ngx_http_upstream_fair_module.so")
