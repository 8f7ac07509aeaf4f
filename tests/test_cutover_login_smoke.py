"""The scripted form POST smoke test (cutover.form_smoke) against the sample
Rack app served for real (Debian's puma, a real PostgreSQL 15), reached as
the site's real host name at the new address (no DNS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cutover.config import CutoverConfig, derive
from builder.cutover.smoke_form import run_form
from builder.cutover.steps import smoke_new_site
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import FormSmoke, SecretRef
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    ROOT,
    SUPER_PASSWORD,
    Cluster,
    destroy_cluster,
    free_port,
    start_cluster,
)
from tests.manifest_problems import problems_with
from tests.servers import serving


@pytest.fixture
def rack_app(pg_template: Path, tmp_path: Path) -> Iterator[tuple[int, Cluster]]:
    c = start_cluster(pg_template, "rack")
    try:
        c.sql("CREATE DATABASE payroll", dbname="postgres")
        port = free_port()
        url = f"postgres://postgres:{SUPER_PASSWORD}@127.0.0.1:{c.port}/payroll"
        (tmp_path / "uploads").mkdir()
        with serving(["puma", "--bind", f"tcp://127.0.0.1:{port}", "--threads", "1:1",
                      "--environment", "production", str(ROOT / "cloudinit/app/config.ru")],
                     port, tmp_path / "puma.log", cwd=ROOT / "cloudinit/app",
                     env={**os.environ, "DATABASE_URL": url, "RACK_ENV": "production",
                          "UPLOADS_DIR": str(tmp_path / "uploads")}):
            yield port, c
    finally:
        destroy_cluster(c)


def _cfg(port: int, spec: FormSmoke, **env: str) -> CutoverConfig:
    m = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    assert m.cutover is not None
    cut = replace(m.cutover, new_site=f"http://payroll.example.com:{port}/",
                  dns=replace(m.cutover.dns, new_address="127.0.0.1"), form_smoke=spec,
                  smoke_paths=("/health",))
    return derive(replace(m, cutover=cut), environ={
        "AMIBAKE_SECRET_SMALLPAYROLL_OLD_DB_SUPERUSER_PASSWORD": "x",
        "AMIBAKE_SECRET_SMALLPAYROLL_NEW_DB_SUPERUSER_PASSWORD": "x", **env})


def test_form_post_reaches_the_app_and_its_database(rack_app: tuple[int, Cluster]) -> None:
    port, db = rack_app
    spec = FormSmoke(action="/employees", fields={"name": "Smoke Test"},
                     secret_fields={"salary": SecretRef("ssm", "/test/smoke-salary")},
                     csrf_field="", expect_status=201, expect_text='"name":"Smoke Test"')
    cfg = _cfg(port, spec, AMIBAKE_SECRET_TEST_SMOKE_SALARY="1234.50")
    assert cfg.form_secrets == {"salary": "1234.50"}
    detail = smoke_new_site(cfg)  # the GET paths, then the form
    assert "1 path(s) answered 200" in detail and "POST /employees" in detail and "201" in detail
    assert db.sql("SELECT name, salary::text FROM employees") == [("Smoke Test", "1234.50")]


@pytest.mark.parametrize(("spec", "message"), [
    (FormSmoke(action="/employees", fields={"name": ""}, csrf_field=""), "answered 400"),
    (FormSmoke(form_path="/", action="/employees", fields={"name": "x"}),
     "no `authenticity_token` field"),
    (FormSmoke(action="/employees", fields={"name": "x"}, csrf_field="",
               expect_redirect="/dashboard"), "redirected to 'nowhere', not /dashboard"),
    (FormSmoke(action="/employees", fields={"name": "x"}, csrf_field="",
               expect_text="Welcome back"), "does not hold 'Welcome back'"),
])
def test_form_failures_are_one_line(rack_app: tuple[int, Cluster], spec: FormSmoke,
                                    message: str) -> None:
    port, _ = rack_app
    with pytest.raises(UserError, match=message):
        run_form(_cfg(port, spec), spec, {})


@pytest.mark.parametrize(("block", "message"), [
    ("  form_smoke: {action: \"/session?x=1\"}\n", "form_smoke.action"),
    ("  form_smoke: {action: /session, fields: {user: \"a\\nb\"}}\n", "one line"),
])
def test_form_smoke_checked_at_load(tmp_path: Path, block: str, message: str) -> None:
    shown, line = problems_with(tmp_path, block)
    assert len(shown) == 1 and f"m.yaml:{line}:" in shown[0] and message in shown[0], shown
