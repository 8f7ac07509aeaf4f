"""The Rails sample's CSRF form, driven over HTTP as a browser does (VM tests).

GET /employees/new gives the session cookie and the form's authenticity_token;
the POST to /employees carries both. Shared by tests/test_vm_rails.py (all-in-one)
and tests/test_vm_stack.py (web → app → db)."""

from __future__ import annotations

import html
import re
import urllib.parse
from dataclasses import dataclass

from builder.vm.checks import HttpAnswer, http_get


@dataclass(frozen=True)
class Form:
    cookie: str  # the session cookie, `name=value`
    token: str  # the form's authenticity_token


def new_employee_form(port: int, host: str) -> Form:
    form = http_get(port, "/employees/new", host_header=host, timeout=60)
    assert form.status == 200, form.body[:500]
    cookie = form.headers["set-cookie"].split(";", 1)[0]
    m = re.search(rb'name="authenticity_token" value="([^"]+)"', form.body)
    assert m, form.body[:500]
    return Form(cookie, html.unescape(m.group(1).decode()))


def post_employee(port: int, host: str, form: Form, name: str, rate: str, *,
                  token: str | None = None) -> HttpAnswer:
    """POST /employees through the form (`token` overrides the form's, to forge one)."""
    body = urllib.parse.urlencode({"authenticity_token": form.token if token is None else token,
                                   "employee[name]": name,
                                   "employee[hourly_rate]": rate}).encode()
    return http_get(port, "/employees", host_header=host, method="POST", body=body,
                    content_type="application/x-www-form-urlencoded",
                    headers={"Cookie": form.cookie}, timeout=60)
