"""The scripted login/POST smoke test (`cutover.form_smoke`): GET the form
page from the new site under its real host name (no DNS involved), read its
CSRF token and session cookie, POST the manifest's fields to the action, and
check the answer's status, redirect and text (following one redirect for
the text, with the session cookie).

As a browser does it, for frameworks that check CSRF (Rails): cookies are
kept by name, a later Set-Cookie replacing an earlier one (Rails sends a
new session cookie with its redirect, holding the flash) and an expired one
removed; the token comes from the form that posts to the action (Rails'
per-form tokens), whose hidden fields are sent too (the manifest's fields
win), else from the first `<input>` of that name, else from the page's
`<meta name="csrf-token">` when `csrf-param` names the field (Rails' layout
tag, what its JavaScript posts with).

The page is read back from a server and not trusted: only attribute values
are taken from it, and only into the form's body."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from urllib.parse import urlencode, urlsplit

from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import resolve_site
from builder.cutover.verify import connection
from builder.errors import UserError
from builder.manifest.model import FormSmoke

MAX_PAGE = 4 * 2**20


class _Form(HTMLParser):
    """The CSRF token and hidden fields for a POST to `action` on a page."""

    def __init__(self, field: str, action: str) -> None:
        super().__init__()
        self.field, self.action = field, action
        self.in_form = False  # inside the first form that posts to `action`
        self.matched = False
        self.form_token: str | None = None
        self.hidden: dict[str, str] = {}
        self.first_token: str | None = None
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.in_form = (not self.matched
                            and urlsplit(a.get("action", "")).path == self.action)
            self.matched = self.matched or self.in_form
        elif tag == "input" and "name" in a:
            if a["name"] == self.field and self.first_token is None:
                self.first_token = a.get("value", "")
            if self.in_form:
                if a["name"] == self.field:
                    self.form_token = a.get("value", "")
                elif a.get("type", "").lower() == "hidden":
                    self.hidden.setdefault(a["name"], a.get("value", ""))
        elif tag == "meta" and a.get("name") in ("csrf-param", "csrf-token"):
            self.meta.setdefault(a["name"], a.get("content", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.in_form = False

    def token(self) -> str | None:
        if self.form_token is not None:
            return self.form_token
        if self.first_token is not None:
            return self.first_token
        if self.meta.get("csrf-param", self.field) == self.field:
            return self.meta.get("csrf-token")
        return None


class _Jar:
    """Cookies by name, as a browser keeps them for one site."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def update(self, headers: list[tuple[str, str]]) -> None:
        for key, value in headers:
            if key.lower() != "set-cookie":
                continue
            pair, _, attrs = value.partition(";")
            name, eq, val = pair.strip().partition("=")
            if not eq or not name:
                continue
            if _expired(attrs):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = val

    def header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())


def _expired(attrs: str) -> bool:
    """Max-Age ≤ 0, or else an Expires in the past (Max-Age wins, RFC 6265)."""
    expires = None
    for attr in attrs.split(";"):
        key, _, value = attr.strip().partition("=")
        key, value = key.lower(), value.strip()
        if key == "max-age" and value.lstrip("-").isdigit():
            return int(value) <= 0
        if key == "expires":
            try:
                expires = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                continue
    if expires is None:
        return False
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= datetime.now(UTC)


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

    fields = {**spec.fields, **secrets}
    jar = _Jar()
    if spec.form_path:
        status, headers, page = request("GET", spec.form_path)
        if status != 200:
            raise UserError(f"form smoke test: GET {spec.form_path} answered {status} on {where}",
                            hint="fix the new site (DNS was not touched)")
        jar.update(headers)
        form = _Form(spec.csrf_field, spec.action)
        form.feed(page)
        fields = {**form.hidden, **fields}
        if spec.csrf_field:
            token = form.token()
            if token is None:
                raise UserError(f"form smoke test: no `{spec.csrf_field}` field in the form at "
                                f"{spec.form_path}", hint="check cutover.form_smoke.csrf_field")
            fields[spec.csrf_field] = token
    status, headers, body = request("POST", spec.action, urlencode(fields), jar.header())
    jar.update(headers)
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
            _, _, body = request("GET", urlsplit(location).path or "/", cookie=jar.header())
        if spec.expect_text not in body:
            raise UserError(f"form smoke test: the answer to POST {spec.action} does not hold "
                            f"{spec.expect_text!r}", hint="did the login fail?")
    return f"POST {spec.action} as {host} answered {status}" + (
        f" → {urlsplit(location).path}" if location else "")
