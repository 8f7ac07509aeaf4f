"""The Rails sample (cloudinit/app-rails/), run for real as production runs it.

A copy of the app against a real PostgreSQL 15 cluster (unprivileged, on
loopback): `db:migrate` and `assets:precompile` with Debian's Rails 6.1 and
gems only (Gemfile.lock resolved from them), then Debian's puma with
RAILS_ENV=production and SECRET_KEY_BASE from the environment. Through HTTP:
the index rendered by Rails, /health following the database, the CSRF form
(a POST with its token lands in PostgreSQL; without it, or with a forged one,
422 and nothing stored). Last, what Rails 6.1 does when migrations run
concurrently: its advisory lock is try-once, the loser fails with
ActiveRecord::ConcurrentMigrationError instead of waiting.
"""

from __future__ import annotations

import html
import re
import secrets
import shutil
import subprocess
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from builder.vm.checks import http_get
from tests.cutover_fixtures import (
    Cluster,
    destroy_cluster,
    free_port,
    pg_template,  # noqa: F401  (session fixture used by `db`)
    start_cluster,
)
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "cloudinit" / "app-rails"
MIGRATION_VERSION = "20261130000000"
DB_USER, DB_PASSWORD = "payroll", "rails-" + secrets.token_hex(8)
#: ActiveRecord::Migrator::MIGRATOR_SALT (activerecord 6.1, migration.rb).
MIGRATOR_SALT = 2053462845


def rails_env(cluster: Cluster, database: str) -> dict[str, str]:
    """The whole environment the app gets: nothing inherited from ours (no
    BUNDLE_PATH, so Bundler uses Debian's system gems)."""
    url = f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{cluster.port}/{database}"
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
        "RAILS_ENV": "production",
        "DATABASE_URL": url,
        "SECRET_KEY_BASE": secrets.token_hex(64),
        "RAILS_SERVE_STATIC_FILES": "1",
    }


def create_database(cluster: Cluster, name: str) -> None:
    cluster.sql(f"CREATE DATABASE {name} OWNER {DB_USER}", dbname="postgres")


def rails(app: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(app / "bin" / "rails"), *args], cwd=app, env=env,
                          capture_output=True, timeout=300, check=False)


@dataclass
class Site:
    app: Path
    cluster: Cluster
    port: int
    log: Path

    def request(self, method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        answer = http_get(self.port, path, method=method, timeout=30, headers=headers,
                          body=body.encode() if body is not None else None)
        return answer.status, answer.headers, answer.body.decode()

    def employees(self) -> list[tuple[object, ...]]:
        return self.cluster.sql("SELECT name, hourly_rate FROM employees ORDER BY id",
                                dbname="payroll_production")


@pytest.fixture(scope="module")
def db(pg_template: Path) -> Iterator[Cluster]:  # noqa: F811
    cluster = start_cluster(pg_template, "rails")
    try:
        cluster.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'", dbname="postgres")
        yield cluster
    finally:
        destroy_cluster(cluster)


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app as the repository holds it, copied: precompiled assets and
    tmp/ land in the copy, never in the checkout."""
    assert not (APP / "config" / "master.key").exists()
    assert not (APP / "config" / "credentials.yml.enc").exists()
    app = tmp_path_factory.mktemp("rails") / "app"
    shutil.copytree(APP, app)
    return app


@pytest.fixture(scope="module")
def site(db: Cluster, app_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    create_database(db, "payroll_production")
    env = rails_env(db, "payroll_production")
    migrated = rails(app_copy, env, "db:migrate")
    assert migrated.returncode == 0, migrated.stderr.decode()
    compiled = rails(app_copy, env, "assets:precompile")
    assert compiled.returncode == 0, compiled.stderr.decode()
    port = free_port()
    log = tmp_path_factory.mktemp("puma") / "puma.log"
    with serving(["/usr/bin/puma", "-C", "config/puma.rb"], port, log, cwd=app_copy,
                 env={**env, "BIND": f"tcp://127.0.0.1:{port}"}):
        yield Site(app_copy, db, port, log)


def session_cookie(headers: dict[str, str]) -> str:
    cookie = headers["set-cookie"].split(";", 1)[0]
    assert cookie.startswith("_payroll_session="), cookie
    return cookie


def form_token(page: str) -> str:
    m = re.search(r'name="authenticity_token" value="([^"]+)"', page)
    assert m, page
    return html.unescape(m.group(1))


def post_employee(site: Site, fields: dict[str, str],
                  cookie: str | None) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    return site.request("POST", "/employees", urllib.parse.urlencode(fields), headers)


def test_the_repository_holds_no_secret_and_the_lockfile_only_debian_gems() -> None:
    ignored = (APP / ".gitignore").read_text().split()
    assert {"/config/master.key", "/config/credentials.yml.enc"} <= set(ignored)
    lock = (APP / "Gemfile.lock").read_text()
    assert "remote:" not in lock and "GIT" not in lock and "PATH" not in lock
    # Frozen (the lockfile matches the Gemfile) and every locked gem installed
    # here from Debian's packages: no BUNDLE_PATH, no vendor/cache.
    check = subprocess.run(["bundle", "check"], cwd=APP, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
                                "BUNDLE_FROZEN": "true"})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "dependencies are satisfied" in check.stdout


def test_production_needs_secret_key_base_from_the_environment(db: Cluster,
                                                               app_copy: Path) -> None:
    """No credentials file, no master key, no secrets.yml: without
    SECRET_KEY_BASE there is no key to sign and encrypt the session with."""
    env = rails_env(db, "postgres")
    del env["SECRET_KEY_BASE"]
    keyless = rails(app_copy, env, "runner", "Rails.application.key_generator")
    assert keyless.returncode == 1
    assert b"Missing `secret_key_base` for 'production' environment" in keyless.stderr


def test_index_is_rendered_by_rails_with_its_precompiled_stylesheet(site: Site) -> None:
    status, headers, page = site.request("GET", "/")
    assert status == 200, page
    assert "<h1>Employees</h1>" in page
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"])  # Rails' request id
    assert '<meta name="csrf-token"' in page
    css = re.search(r'href="(/assets/application-[0-9a-f]{64}\.css)"', page)
    assert css, page
    status, _, body = site.request("GET", css.group(1))
    assert status == 200 and "border-collapse" in body


def test_health_follows_the_database(site: Site) -> None:
    assert site.request("GET", "/health")[:3:2] == (200, "ok\n")
    site.cluster.stop("fast")
    try:
        status, _, body = site.request("GET", "/health")
        assert (status, body) == (503, "database unavailable\n")
    finally:
        site.cluster.start()
    assert site.request("GET", "/health")[:3:2] == (200, "ok\n")


def test_the_form_with_its_csrf_token_adds_an_employee(site: Site) -> None:
    status, headers, page = site.request("GET", "/employees/new")
    assert status == 200, page
    cookie, token = session_cookie(headers), form_token(page)
    name = "Ada O'Brien <ada@example.com>"
    status, headers, body = post_employee(
        site, {"authenticity_token": token, "employee[name]": name,
               "employee[hourly_rate]": "31.50"}, cookie)
    assert status == 302, body
    assert headers["location"] == f"http://127.0.0.1:{site.port}/employees"
    rows = site.employees()
    assert [(n, str(r)) for n, r in rows][-1] == (name, "31.50")
    status, _, index = site.request("GET", "/employees")
    assert status == 200
    assert html.escape(name, quote=False) in index.replace("&#39;", "'")
    assert name not in index  # escaped, never raw HTML


def test_the_index_shows_each_employees_paychecks(site: Site) -> None:
    site.cluster.sql("""
        INSERT INTO employees (name, hourly_rate, created_at, updated_at)
            VALUES ('Grace Paid', 40, now(), now());
        INSERT INTO paychecks (employee_id, period_ending, gross, created_at, updated_at)
            SELECT id, d::date, 3200, now(), now() FROM employees,
                   unnest(ARRAY['2026-10-31', '2026-11-27']) AS d
            WHERE name = 'Grace Paid'""", dbname="payroll_production")
    status, _, index = site.request("GET", "/")
    assert status == 200
    row = re.search(r"<td>Grace Paid</td>(.*?)</tr>", index, re.S)
    assert row, index
    assert re.findall(r"<td>([^<]*)</td>", row.group(1)) == ["$40.00", "2", "2026-11-27"]


def test_an_invalid_employee_is_shown_the_form_again(site: Site) -> None:
    status, headers, page = site.request("GET", "/employees/new")
    before = site.employees()
    status, _, body = post_employee(
        site, {"authenticity_token": form_token(page), "employee[name]": "",
               "employee[hourly_rate]": "-1"}, session_cookie(headers))
    assert status == 422
    assert "Name can&#39;t be blank" in body and "Hourly rate must be greater than 0" in body
    assert site.employees() == before


def test_a_post_without_the_token_or_with_a_forged_one_is_refused(site: Site) -> None:
    status, headers, page = site.request("GET", "/employees/new")
    cookie = session_cookie(headers)
    before = site.employees()
    fields = {"employee[name]": "Mallory", "employee[hourly_rate]": "99"}
    for extra, with_cookie in (({}, cookie), ({}, None),
                               ({"authenticity_token": form_token(page)}, None),
                               ({"authenticity_token": "A" * 88}, cookie)):
        status, _, body = post_employee(site, {**fields, **extra}, with_cookie)
        assert status == 422, (extra, with_cookie, body)
        assert "The change you wanted was rejected." in body  # public/422.html
    assert site.employees() == before


def migrator_lock_id(database: str) -> int:
    return MIGRATOR_SALT * zlib.crc32(database.encode())


def test_migrate_while_another_holds_the_lock_fails_at_once(db: Cluster, app_copy: Path) -> None:
    """Rails 6.1 takes pg_try_advisory_lock: it does not wait for the holder."""
    create_database(db, "payroll_locked")
    env = rails_env(db, "payroll_locked")
    dsn = db.dsn("payroll_locked", DB_USER, DB_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrator_lock_id("payroll_locked"),))
        refused = rails(app_copy, env, "db:migrate")
    assert refused.returncode == 1
    assert b"ActiveRecord::ConcurrentMigrationError" in refused.stderr
    assert db.sql("SELECT to_regclass('employees')", dbname="payroll_locked") == [(None,)]
    assert rails(app_copy, env, "db:migrate").returncode == 0  # lock released: it runs


def test_two_concurrent_migrations_apply_it_once(db: Cluster, app_copy: Path) -> None:
    """Two `db:migrate` started together: the migration is applied exactly once;
    each process either succeeded (it migrated, or found nothing to do) or lost
    the lock with ConcurrentMigrationError, never another error."""
    create_database(db, "payroll_race")
    env = rails_env(db, "payroll_race")
    procs = [subprocess.Popen([str(app_copy / "bin" / "rails"), "db:migrate"], cwd=app_copy,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1].decode()) for p in procs]
    for rc, err in results:
        assert rc == 0 or (rc == 1 and "ActiveRecord::ConcurrentMigrationError" in err), err
    assert any(rc == 0 for rc, _ in results)
    assert db.sql("SELECT version FROM schema_migrations", dbname="payroll_race") == \
        [(MIGRATION_VERSION,)]
    assert db.sql("SELECT count(*) FROM pg_tables WHERE tablename IN ('employees', 'paychecks')",
                  dbname="payroll_race") == [(2,)]
