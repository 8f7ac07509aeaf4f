"""The notice banner on the OLD site (issue 14 part 4e), with real nginx on
loopback running the web role's rendered configuration: `notify` (and
`banner-on`) puts the notice on its pages, also on pages the app would send
gzip-compressed, `banner-off` and the maintenance page take it down, and a
hostile notice text is escaped (or refused with one line), never run."""

from __future__ import annotations

import gzip
import http.client
import shlex
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from builder.cutover import banner, maintenance, notify
from builder.cutover.config import derive
from builder.cutover.verify import fetch
from builder.errors import UserError
from builder.manifest.model import Manifest, Notice, NoticeMail
from builder.proc import run
from builder.render.nginx import banner_conf
from builder.wait import NotYet, Waiter, wait_for
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import SERVER_NAME, Cluster, Knot, Site, cutover_manifest
from tests.servers import serving_http
from tests.test_cutover_notice import Inbox, smtp  # noqa: F401  (the SMTP server fixture)


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
    assert text.count("\n") == 4 and text.count("sub_filter ") == 2  # no directive injected
    assert "a } sub_filter x y;" in text
    bell = replace(m, cutover=replace(m.cutover, notice=Notice(contact="ring\x07")))
    with pytest.raises(UserError) as info:
        banner.switch(derive(bell), True)
    assert "\n" not in str(info.value) and "notice banner cannot be written" in str(info.value)
    assert "U+0007" in str(info.value)
    assert not Path(banner_conf(m.components.nginx)).exists()  # type: ignore[arg-type]


def _mailing(m: Manifest, port: int, tmp_path: Path) -> Manifest:
    """`m` with notice.mail to one recipient through the loopback SMTP server."""
    assert m.cutover is not None
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("a@example.com\n")
    mail = NoticeMail(smtp_host="127.0.0.1", smtp_port=port, starttls=False,
                      sender="ops@example.com", recipients_file=str(rcpt))
    return replace(m, cutover=replace(m.cutover, notice=replace(m.cutover.notice, mail=mail)))


def test_notify_puts_the_banner_up_and_mails_the_notice_and_the_window_takes_it_down(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
    smtp: tuple[Inbox, int], tmp_path: Path,  # noqa: F811
) -> None:
    inbox, port = smtp
    m = _mailing(_manifest(pg_pair, knot, sites), port, tmp_path)
    cfg = derive(m)
    assert banner.MARKER not in _page(sites[0])
    done = notify.notify(cfg)
    assert "notice banner on" in done[0] and "sent to 1 recipient(s)" in done[1]
    assert banner.MARKER in _page(sites[0]) and len(inbox.envelopes) == 1
    maintenance.switch(cfg, True)  # the window opens: maintenance page, no banner file
    assert not Path(banner_conf(cfg.nginx)).exists()
    maintenance.switch(cfg, False)  # a rollback: the old site back, without the banner
    _no_banner_once_reloaded(sites[0])


def _no_banner_once_reloaded(site: Site) -> None:
    """`nginx -s reload` returns before the old workers are gone: wait (bounded)."""
    def gone() -> None:
        if banner.MARKER in _page(site):
            raise NotYet("the page still shows the banner")
    wait_for(gone, Waiter("the banner gone", attempts=40, interval=0.25, successes=3))


def test_notify_stops_before_the_mail_when_the_banner_cannot_go_up(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
    smtp: tuple[Inbox, int], tmp_path: Path,  # noqa: F811
) -> None:
    inbox, port = smtp
    m = _mailing(_manifest(pg_pair, knot, sites), port, tmp_path)
    assert m.cutover is not None
    cut = replace(m.cutover, old_web_reload="nginx -s reload -c /nonexistent/nginx.conf")
    with pytest.raises(UserError, match="notice banner on"):
        notify.notify(derive(replace(m, cutover=cut)))
    assert inbox.envelopes == []  # a mail cannot be taken back: none sent
    no_banner = replace(cut, notice=replace(cut.notice, banner=False))
    assert "sent to 1" in notify.notify(derive(replace(m, cutover=no_banner)))[0]
    assert banner.MARKER not in _page(sites[0])


class _GzipApp(BaseHTTPRequestHandler):
    """An app that compresses its pages whenever the request accepts gzip."""

    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.headers.get("Accept-Encoding"))
        body = (b"<!DOCTYPE html>\n<html><body><h1>employees from the app</h1>"
                + b"<p>row</p>" * 200 + b"</body></html>\n")
        zipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if zipped:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if zipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gzip_app() -> Iterator[int]:
    with serving_http(_GzipApp) as server:
        yield server.server_address[1]


def _get(host: str, port: int, path: str, host_name: str) -> tuple[int, bytes]:
    """GET as a browser does (accepting gzip); the body decompressed."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host_name, "Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return resp.status, body
    finally:
        conn.close()


def test_the_banner_reaches_pages_the_app_would_gzip(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
    gzip_app: int,
) -> None:
    old_site = sites[0]
    # the old site's app servers: the gzipping app
    (old_site.base / "upstream.conf").write_text(f"server 127.0.0.1:{gzip_app};\n")
    run(["bash", "-c", _reload(old_site)], capture=True)

    def proxied() -> None:  # the reload done: new workers reach the app
        if _get(old_site.address, old_site.port, "/employees", SERVER_NAME)[0] != 200:
            raise NotYet("not proxied to the app yet")
    wait_for(proxied, Waiter("the old site proxying to the app", attempts=40, interval=0.25,
                             successes=3))
    cfg = derive(_manifest(pg_pair, knot, sites))
    status, page = _get(old_site.address, old_site.port, "/employees", SERVER_NAME)
    assert status == 200 and b"employees from the app" in page
    assert _GzipApp.seen[-1] == "gzip"  # it was asked for gzip, and so compressed
    assert banner.MARKER not in page

    banner.switch(cfg, True)
    status, page = _get(old_site.address, old_site.port, "/employees", SERVER_NAME)
    assert status == 200 and b"employees from the app" in page
    assert banner.MARKER in page and page.index(banner.MARKER) < page.index(b"</body>")
    assert _GzipApp.seen[-1] is None  # the banner asks the app for identity encoding
    banner.switch(cfg, False)  # (waits for pages without it)
    _get(old_site.address, old_site.port, "/employees", SERVER_NAME)
    assert _GzipApp.seen[-1] == "gzip"  # identity asked for only while it is up
