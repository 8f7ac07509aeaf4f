"""The notice banner on the OLD site (issue 14 part 4e), with real nginx on
loopback running the web role's rendered configuration: `banner-on` puts the
notice on its pages, `banner-off` and the maintenance page take it down, and
a hostile notice text is escaped (or refused with one line), never run."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cutover import banner, maintenance
from builder.cutover.config import derive
from builder.cutover.verify import fetch
from builder.errors import UserError
from builder.manifest.model import Manifest, Notice
from builder.render.nginx import banner_conf
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import SERVER_NAME, Cluster, Knot, Site, cutover_manifest


def _reload(site: Site) -> str:
    """The old site's reload command (its nginx runs with its own prefix here)."""
    return shlex.join(["nginx", "-p", str(site.base), "-c", str(site.base / "nginx.conf"),
                       "-s", "reload"])


def _manifest(pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
              contact: str = "Pat Doe, support@example.com") -> Manifest:
    old, new = pg_pair
    (sites[0].static_root / "index.html").write_text(  # a whole page, as the app's are
        "<!DOCTYPE html>\n<html><head><title>payroll</title></head>\n"
        "<body><h1>payroll on the old server</h1></body></html>\n")
    return cutover_manifest(old, new, knot, sites, old_web_reload=_reload(sites[0]),
                            notice=Notice(contact=contact))


def _page(site: Site) -> bytes:
    status, _, body = fetch(site.url, "/", SERVER_NAME)
    assert status == 200
    return body


def test_banner_on_shows_the_notice_and_off_or_the_maintenance_page_removes_it(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    old_site = sites[0]
    cfg = derive(_manifest(pg_pair, knot, sites))
    assert banner.MARKER not in _page(old_site)

    detail = banner.switch(cfg, True)
    assert "notice banner on" in detail
    page = _page(old_site)
    assert banner.MARKER in page and b"Pat Doe, support@example.com" in page
    assert b"payroll on the old server" in page  # the page itself is still served
    assert page.index(b"payroll on the old server") < page.index(banner.MARKER) \
        < page.index(b"</body>")

    banner.switch(cfg, False)
    assert banner.MARKER not in _page(old_site)
    assert not Path(banner_conf(cfg.nginx)).exists()

    banner.switch(cfg, True)
    maintenance.switch(cfg, True)  # the window: the page comes, the banner goes
    assert not Path(banner_conf(cfg.nginx)).exists()
    maintenance.switch(cfg, False)
    banner.switch(cfg, False)  # idempotent: nothing there, nothing reloaded
    assert banner.MARKER not in _page(old_site)


def test_a_hostile_notice_is_escaped_on_the_page(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    hostile = '</div><script>alert(1)</script> "quoted" $host \\ \' end'
    cfg = derive(_manifest(pg_pair, knot, sites, contact=hostile))
    banner.switch(cfg, True)
    page = _page(sites[0])
    assert b"<script>" not in page
    assert b"&lt;/div&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert b"&#34;quoted&#34;" in page
    assert b"&#36;host" in page  # not expanded by nginx to the request's host name
    assert SERVER_NAME.encode() + b" \\" not in page
    assert b"\\ &#39; end" in page
    banner.switch(cfg, False)


def test_a_line_break_stays_text_and_a_control_character_is_refused(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    m = _manifest(pg_pair, knot, sites)
    broken = replace(m, cutover=replace(m.cutover, notice=Notice(contact="a\n}\nsub_filter x y;")))
    text = banner.banner_conf_text(derive(broken))
    assert text.count("\n") == 3 and text.count("sub_filter ") == 2  # no directive injected
    assert "a } sub_filter x y;" in text
    bell = replace(m, cutover=replace(m.cutover, notice=Notice(contact="ring\x07")))
    with pytest.raises(UserError) as info:
        banner.switch(derive(bell), True)
    assert "\n" not in str(info.value) and "notice banner cannot be written" in str(info.value)
    assert "U+0007" in str(info.value)
    assert not Path(banner_conf(m.components.nginx)).exists()  # type: ignore[arg-type]
