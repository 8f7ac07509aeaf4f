"""The maintenance switch against nginx running the web role's real rendered
config (builder/render/nginx.py), bound to loopback."""

from __future__ import annotations

from pathlib import Path

from builder.cutover import maintenance, verify
from builder.cutover.config import derive
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import SERVER_NAME, Cluster, Knot, Site, cutover_manifest


def test_switch_on_and_off(pg_pair: tuple[Cluster, Cluster], knot: Knot,
                           sites: tuple[Site, Site], secret_env: None) -> None:
    old, new = pg_pair
    site = sites[0]
    cfg = derive(cutover_manifest(old, new, knot, sites,
                                  window_start="2026-12-06T00:00:00-05:00", window_minutes=30))
    assert verify.fetch(site.url, "/", SERVER_NAME)[0] == 200
    maintenance.switch(cfg, True)
    maintenance.switch(cfg, True)  # idempotent
    for path in ("/", "/health", "/employees", "/uploads/new"):
        status, headers, body = verify.fetch(site.url, path, SERVER_NAME)
        assert status == 503 and headers["retry-after"] == "300"
        page = body.decode()
        assert "Saturday, December 5, 2026, 11:59 pm EST" in page  # the notice's wording
        assert "12:30 am EST" in page and "Pat Doe, support@example.com" in page
        assert "nothing will be lost" in page
    assert Path(cfg.nginx.maintenance_page).read_text() == maintenance.render_page(cfg)
    maintenance.switch(cfg, False)
    maintenance.switch(cfg, False)
    status, _, body = verify.fetch(site.url, "/", SERVER_NAME)
    assert status == 200 and b"old server" in body


def test_page_escapes_the_contact(pg_pair: tuple[Cluster, Cluster], knot: Knot,
                                  sites: tuple[Site, Site], secret_env: None) -> None:
    old, new = pg_pair
    m = cutover_manifest(old, new, knot, sites)
    from dataclasses import replace

    assert m.cutover is not None
    m = replace(m, cutover=replace(m.cutover, notice=replace(
        m.cutover.notice, contact="<script>alert(1)</script>")))
    page = maintenance.render_page(derive(m))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_host_header_reaches_the_new_site_without_dns(sites: tuple[Site, Site]) -> None:
    """The new nginx answers only the real name: the smoke test is what a
    hosts-file override would see, and a bare address gets 421."""
    new = sites[1]
    url = f"http://{SERVER_NAME}:{new.port}/"
    assert verify.fetch(url, "/health", SERVER_NAME, address=new.address)[0] == 200
    assert verify.fetch(new.url, "/health", new.address)[0] == 421


def test_page_with_a_window_start_with_seconds(pg_pair: tuple[Cluster, Cluster], knot: Knot,
                                                sites: tuple[Site, Site], secret_env: None) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites,
                                  window_start="2026-12-06T12:00:30-05:00", window_minutes=30))
    page = maintenance.render_page(cfg)
    assert "Sunday, December 6, 2026, 11:59 am EST" in page
    assert "12:31 pm EST" in page and "12:00" not in page
