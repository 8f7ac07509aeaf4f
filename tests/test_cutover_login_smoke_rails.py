"""The scripted login/POST smoke test (cutover.form_smoke) against the Rails
sample (cloudinit/app-rails/) served for real as production serves it:
Debian's Rails 6.1 and puma, RAILS_ENV=production, a real PostgreSQL 15
cluster run as an unprivileged user, on loopback. Rails checks the CSRF
token (per-form tokens, bound to the session cookie) and keeps the flash
in the session cookie it sends back with its redirect."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cutover.smoke_form import run_form
from builder.cutover.steps import smoke_new_site
from builder.errors import UserError
from builder.manifest.model import FormSmoke, SecretRef
from tests.cutover_fixtures import (
    Cluster,
    destroy_cluster,
    free_port,
    pg_template,  # noqa: F401  (session fixture used by `rails_db`)
    start_cluster,
)
from tests.servers import serving
from tests.test_cutover_login_smoke import _cfg  # the new site at 127.0.0.1, GET /health
from tests.test_sample_rails import APP, DB_PASSWORD, DB_USER, create_database, rails, rails_env

DATABASE = "payroll_production"


@pytest.fixture(scope="module")
def rails_site(pg_template: Path,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Cluster]]:
    """The sample migrated, its assets precompiled, under puma on loopback."""
    cluster = start_cluster(pg_template, "rails-smoke")
    try:
        cluster.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'", dbname="postgres")
        create_database(cluster, DATABASE)
        app = tmp_path_factory.mktemp("rails-smoke") / "app"
        shutil.copytree(APP, app)  # tmp/ and public/assets land in the copy
        env = rails_env(cluster, DATABASE)
        for task in ("db:migrate", "assets:precompile"):
            done = rails(app, env, task)
            assert done.returncode == 0, done.stderr.decode()
        port = free_port()
        with serving(["/usr/bin/puma", "-C", "config/puma.rb"], port, app / "puma.log",
                     cwd=app, env={**env, "BIND": f"tcp://127.0.0.1:{port}"}):
            yield port, cluster
    finally:
        destroy_cluster(cluster)


def _names(db: Cluster) -> list[str]:
    return [r[0] for r in db.sql("SELECT name FROM employees ORDER BY id", dbname=DATABASE)]


def test_the_form_passes_rails_csrf_check_and_the_flash_follows_the_redirect(
    rails_site: tuple[int, Cluster],
) -> None:
    """GET the form (session cookie + its per-form authenticity_token), POST
    the fields and a secret one, 302 to /employees, and the flash ("Added
    …"), which Rails keeps in the session cookie its redirect sets, shown on
    the page it redirects to."""
    port, db = rails_site
    spec = FormSmoke(form_path="/employees/new", action="/employees",
                     fields={"employee[name]": "Smoke Test"},
                     secret_fields={"employee[hourly_rate]": SecretRef("ssm", "/test/rate")},
                     expect_status=302, expect_redirect="/employees",
                     expect_text="Added Smoke Test.")
    cfg = _cfg(port, spec, AMIBAKE_SECRET_TEST_RATE="31.50")
    detail = smoke_new_site(cfg)  # the GET paths, then the form
    assert "1 path(s) answered 200" in detail
    assert "POST /employees as payroll.example.com answered 302 → /employees" in detail
    assert db.sql("SELECT hourly_rate::text FROM employees WHERE name = 'Smoke Test'",
                  dbname=DATABASE) == [("31.50",)]


def test_the_token_from_the_pages_csrf_meta_tag_when_the_page_has_no_form(
    rails_site: tuple[int, Cluster],
) -> None:
    """The index has no form, only Rails' `csrf-param`/`csrf-token` meta tags
    (what its JavaScript posts with): that session token is accepted too."""
    port, db = rails_site
    spec = FormSmoke(form_path="/", action="/employees",
                     fields={"employee[name]": "Meta Token", "employee[hourly_rate]": "20"},
                     expect_redirect="/employees", expect_text="Added Meta Token.")
    assert "answered 302" in run_form(_cfg(port, spec), spec, {})
    assert "Meta Token" in _names(db)


@pytest.mark.parametrize(("spec", "message"), [
    # no form fetched, so no session and no token: Rails refuses the POST (422)
    (FormSmoke(action="/employees", csrf_field="",
               fields={"employee[name]": "No Token", "employee[hourly_rate]": "20"}),
     "POST /employees answered 422"),
    # the session cookie, but a forged token in place of the form's
    (FormSmoke(form_path="/employees/new", action="/employees", csrf_field="",
               fields={"employee[name]": "No Token", "employee[hourly_rate]": "20",
                       "authenticity_token": "A" * 88}), "POST /employees answered 422"),
    # Rails' answer to a bad form is the form again (422), not the redirect
    (FormSmoke(form_path="/employees/new", action="/employees",
               fields={"employee[name]": "", "employee[hourly_rate]": "-1"}),
     "POST /employees answered 422"),
    # a login that "works" but lands elsewhere
    (FormSmoke(form_path="/employees/new", action="/employees",
               fields={"employee[name]": "Wrong Place", "employee[hourly_rate]": "20"},
               expect_redirect="/dashboard"), "redirected to '/employees', not /dashboard"),
])
def test_what_rails_refuses_fails_the_smoke_test_in_one_line(
    rails_site: tuple[int, Cluster], spec: FormSmoke, message: str,
) -> None:
    port, db = rails_site
    with pytest.raises(UserError, match=message) as info:
        run_form(_cfg(port, spec), spec, {})
    assert "\n" not in str(info.value)
    assert "No Token" not in _names(db)


def test_the_token_and_hidden_fields_come_from_the_form_that_posts_to_the_action() -> None:
    """A page whose first form is another one (a sign-out button, Rails'
    button_to): per-form tokens differ, so the login form's own is taken."""
    from builder.cutover.smoke_form import _Form, _Jar

    page = """<html><head><meta name="csrf-param" content="authenticity_token">
      <meta name="csrf-token" content="META"></head><body>
      <form class="button_to" method="post" action="/session?x=1"><input type="hidden"
        name="_method" value="delete"><input type="hidden" name="authenticity_token"
        value="SIGNOUT"></form>
      <form action="https://payroll.example.com/session" method="post">
        <input type="hidden" name="authenticity_token" value="LOGIN&amp;+/=">
        <input type="hidden" name="return_to" value="/payslips">
        <input type="text" name="email" value="prefilled">
      </form></body></html>"""
    form = _Form("authenticity_token", "/session")
    form.feed(page)
    assert form.token() == "SIGNOUT"  # "/session?x=1" is /session too: the first such form
    form = _Form("authenticity_token", "/login")
    form.feed(page)
    assert form.token() == "SIGNOUT" and form.hidden == {}  # no form posts there: first input
    login = page.replace('action="/session?x=1"', 'action="/signout"')
    form = _Form("authenticity_token", "/session")
    form.feed(login)
    assert form.token() == "LOGIN&+/=" and form.hidden == {"return_to": "/payslips"}
    form = _Form("authenticity_token", "/session")
    form.feed('<meta name="csrf-param" content="authenticity_token">'
              '<meta name="csrf-token" content="META">')
    assert form.token() == "META"
    form = _Form("csrfmiddlewaretoken", "/session")
    form.feed('<meta name="csrf-param" content="authenticity_token">'
              '<meta name="csrf-token" content="META">')
    assert form.token() is None  # the meta tag names another field

    jar = _Jar()
    jar.update([("Set-Cookie", "_s=one; path=/; HttpOnly"), ("Set-Cookie", "lang=en")])
    jar.update([("Set-Cookie", "_s=two; path=/; SameSite=Lax"),
                ("Set-Cookie", "lang=; max-age=0"), ("Content-Type", "text/html")])
    assert jar.header() == "_s=two"
    jar.update([("Set-Cookie", "_s=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT")])
    assert jar.header() == ""
    jar.update([("Set-Cookie", "_s=three; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60")])
    assert jar.header() == "_s=three"  # Max-Age wins over Expires
