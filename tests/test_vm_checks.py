"""What each role is expected to show, from the manifest and roles.json."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.vm.boottest import boot_order
from builder.vm.checks import expectations_for, expected_services, http_get
from tests.bake_fixture import rack_seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(ROOT / "manifests" / "smallpayroll.yaml")


def test_plans_for_the_seed_roles(manifest: Manifest) -> None:
    web, app, db, aio = (expectations_for(manifest, r) for r in ("web", "app", "db", "all-in-one"))
    assert (web.nginx, web.full_chain, web.postgresql, web.app_ports) == (True, False, False, ())
    assert (app.nginx, app.postgresql, app.app_ports) == (False, False, (8000, 8001, 8002))
    assert (db.nginx, db.postgresql, db.mount_point) == (False, True, "/mnt")
    assert (aio.nginx, aio.full_chain, aio.postgresql) == (True, True, True)
    assert web.maintenance_flag == "/var/www/maintenance/on" and web.retry_after == 300
    assert web.static_page == "/404.html"
    assert web.server_name == "payroll.example.com"
    # the Rails sample: the app role booted alone waits in its migration for a database
    assert [e.migration_waits for e in (web, app, db, aio)] == [False, True, False, False]
    assert all(e.own_app for e in (web, app, db, aio))
    rack_app = expectations_for(rack_seed(manifest), "app")
    assert (rack_app.own_app, rack_app.migration_waits) == (False, False)


def test_expected_services_split_mine_from_the_others() -> None:
    roles_json = {
        "version": 1, "login_user": "admin",
        "roles": {"web": {"services": ["nginx.service"]},
                  "db": {"services": ["postgresql@15-main.service"]},
                  "all-in-one": {"services": ["nginx.service", "postgresql@15-main.service"]}},
        "all_services": ["nginx.service", "postgresql@15-main.service"],
    }
    assert expected_services(roles_json, "web") == (
        {"nginx.service"}, {"postgresql@15-main.service"})
    assert expected_services(roles_json, "all-in-one") == (
        {"nginx.service", "postgresql@15-main.service"}, set())
    with pytest.raises(ValueError, match="no role 'app'"):
        expected_services(roles_json, "app")


def test_boot_plan_is_uefi_per_role_and_bios_once() -> None:
    assert boot_order(["web", "db"], bios_once=True) == [
        ("web", "uefi"), ("db", "uefi"), ("web", "bios")]
    assert boot_order(["web", "db"], bios_once=False) == [("web", "uefi"), ("db", "uefi")]
    assert boot_order([], bios_once=True) == []


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(503 if self.path == "/down" else 200)
        self.send_header("Retry-After", "300")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(self.headers["Host"].encode()[:2])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_get_sends_the_host_and_reads_headers(server: int) -> None:
    ans = http_get(server, "/down", host_header="payroll.example.com")
    assert ans.status == 503 and ans.headers["retry-after"] == "300" and ans.body == b"pa"


def test_http_get_to_nothing_is_an_oserror() -> None:
    from builder.ports import free_port
    with pytest.raises(OSError):
        http_get(free_port(), "/")


def test_a_guest_kernel_stuck_for_a_minute_counts_as_hung() -> None:
    from builder.vm.boottest import guest_hung

    line = "[  28.5] watchdog: BUG: soft lockup - CPU#0 stuck for {}s! [cryptomgr_test:50]"
    assert not guest_hung("Debian GNU/Linux 12 ip-169-254-2-15 ttyS0\nlogin:")
    assert not guest_hung(line.format(26))  # a slow moment on a loaded host
    assert guest_hung(line.format(26) + "\n" + line.format(61))
