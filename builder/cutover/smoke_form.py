"""The scripted login/POST smoke test (`cutover.form_smoke`): GET the form
page from the new site under its real host name (no DNS involved), read its
CSRF token and session cookie, POST the manifest's fields to the action, and
check the answer's status, redirect and text (following one redirect for
the text, with the session cookie).

The page is read back from a server and not trusted: the token is taken
from the first `<input>` whose name is exactly the CSRF field."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from html.parser import HTMLParser
from urllib.parse import urlencode, urlsplit

from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import resolve_site
from builder.cutover.verify import connection
from builder.errors import UserError
from builder.manifest.model import FormSmoke

MAX_PAGE = 4 * 2**20


class _Inputs(HTMLParser):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "input" and self.value is None:
            a = dict(attrs)
            if a.get("name") == self.name:
                self.value = a.get("value") or ""


def _cookies(headers: list[tuple[str, str]]) -> str:
    return "; ".join(v.split(";", 1)[0].strip() for k, v in headers
                     if k.lower() == "set-cookie")


def run_form(cfg: CutoverConfig, spec: FormSmoke, secrets: Mapping[str, str], *,
             address: str | None = None) -> str:
    """`address`: where new_address resolved (default: resolved here)."""
    cut = cfg.cutover
    host = urlsplit(cut.new_site).hostname or cfg.server_name
    address = address or resolve_site(cut.dns)
    where = f"{cut.new_site} at {address}"

    def request(method: str, path: str, body: str = "", cookie: str = "",
                ) -> tuple[int, list[tuple[str, str]], str]:
        conn = connection(cut.new_site, host, address=address)
        headers = {"Host": host, "User-Agent": "amibake-cutover"}
        if body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if cookie:
            headers["Cookie"] = cookie
        try:
            conn.request(method, path, body=body.encode() if body else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read(MAX_PAGE).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise UserError(f"form smoke test: {method} {path} on {where}: {exc}",
                            hint="fix the new site (DNS was not touched)") from exc
        finally:
            conn.close()

    fields = dict(spec.fields)
    fields.update(secrets)
    cookie = ""
    if spec.form_path:
        status, headers, page = request("GET", spec.form_path)
        if status != 200:
            raise UserError(f"form smoke test: GET {spec.form_path} answered {status} on {where}",
                            hint="fix the new site (DNS was not touched)")
        cookie = _cookies(headers)
        if spec.csrf_field:
            parser = _Inputs(spec.csrf_field)
            parser.feed(page)
            if parser.value is None:
                raise UserError(f"form smoke test: no `{spec.csrf_field}` field in the form at "
                                f"{spec.form_path}", hint="check cutover.form_smoke.csrf_field")
            fields[spec.csrf_field] = parser.value
    status, headers, body = request("POST", spec.action, urlencode(fields), cookie)
    ok = status == spec.expect_status if spec.expect_status else 200 <= status < 400
    if not ok:
        raise UserError(f"form smoke test: POST {spec.action} answered {status} on {where}"
                        + (f" (expected {spec.expect_status})" if spec.expect_status else ""),
                        hint="fix the new site (DNS was not touched), or `cutover rollback`")
    location = next((v for k, v in headers if k.lower() == "location"), "")
    if spec.expect_redirect and urlsplit(location).path != spec.expect_redirect:
        raise UserError(f"form smoke test: POST {spec.action} redirected to "
                        f"{urlsplit(location).path or 'nowhere'!r}, not {spec.expect_redirect}",
                        hint="did the login fail? check the test user and fields")
    if spec.expect_text:
        if location:
            cookie = "; ".join(c for c in (cookie, _cookies(headers)) if c)
            _, _, body = request("GET", urlsplit(location).path or "/", cookie=cookie)
        if spec.expect_text not in body:
            raise UserError(f"form smoke test: the answer to POST {spec.action} does not hold "
                            f"{spec.expect_text!r}", hint="did the login fail?")
    return f"POST {spec.action} as {host} answered {status}" + (
        f" → {urlsplit(location).path}" if location else "")
