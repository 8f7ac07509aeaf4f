"""The cutover section: validated by the manifest loader (file:line), secrets
by reference (SSM via a client passed in, or AMIBAKE_SECRET_<NAME>)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from builder.cutover.config import derive
from builder.errors import UserError
from builder.manifest import load_manifest, load_manifest_text
from builder.manifest.model import SecretRef
from builder.secret_values import resolve_secret, secret_env_name

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"
ENV = {
    "AMIBAKE_SECRET_SMALLPAYROLL_OLD_DB_SUPERUSER_PASSWORD": "old-pw",
    "AMIBAKE_SECRET_SMALLPAYROLL_NEW_DB_SUPERUSER_PASSWORD": "new-pw",
}


def test_env_name() -> None:
    assert secret_env_name(SecretRef("ssm", "/smallpayroll/db-password")) == \
        "AMIBAKE_SECRET_SMALLPAYROLL_DB_PASSWORD"


def test_secrets_from_ssm_through_the_client_passed_in() -> None:
    with mock_aws():
        ssm = boto3.client("ssm", region_name="us-east-1")
        for name, value in (("/smallpayroll/old-db-superuser-password", "from-ssm-old"),
                            ("/smallpayroll/new-db-superuser-password", "from-ssm-new")):
            ssm.put_parameter(Name=name, Value=value, Type="SecureString")
        cfg = derive(load_manifest(MANIFEST), ssm=ssm, environ={})
    assert cfg.old.password == "from-ssm-old" and cfg.new.password == "from-ssm-new"
    assert cfg.app_user == "payroll" and cfg.server_name == "payroll.example.com"
    assert "from-ssm-old" not in repr(cfg.cutover)  # the model only holds the reference


def test_env_override_beats_the_store() -> None:
    cfg = derive(load_manifest(MANIFEST), environ=ENV)
    assert (cfg.old.password, cfg.new.password) == ("old-pw", "new-pw")
    assert "password='old-pw'" in cfg.publisher.conninfo()


def test_missing_secret_names_the_env_var() -> None:
    with pytest.raises(UserError) as exc:
        derive(load_manifest(MANIFEST), environ={})
    assert "AMIBAKE_SECRET_SMALLPAYROLL_OLD_DB_SUPERUSER_PASSWORD" in exc.value.hint


def test_missing_ssm_parameter() -> None:
    with mock_aws():
        ssm = boto3.client("ssm", region_name="us-east-1")
        with pytest.raises(UserError, match="cannot read SSM parameter /nope"):
            resolve_secret(SecretRef("ssm", "/nope"), ssm=ssm, environ={})


def test_bad_cutover_field_points_at_its_line() -> None:
    text = MANIFEST.read_text().replace("  strategy: replicate", "  strategy: teleport")
    line = text.splitlines().index("  strategy: teleport") + 1
    with pytest.raises(UserError) as exc:
        load_manifest_text(text, "m.yaml")
    locs = [(p.location.line, p.message) for p in exc.value.problems]
    assert any(ln == line and "teleport" in msg for ln, msg in locs), locs


def test_literal_password_is_refused() -> None:
    text = MANIFEST.read_text().replace(
        "password: {ssm: /smallpayroll/old-db-superuser-password}", "password: hunter2")
    with pytest.raises(UserError) as exc:
        load_manifest_text(text, "m.yaml")
    assert any("old_db.password" in str(p) or "password" in p.message
               for p in exc.value.problems)


def test_app_role_must_not_be_the_cutover_superuser() -> None:
    m = load_manifest(MANIFEST)
    m = replace(m, app=replace(m.app, database=replace(m.app.database, user="postgres")))
    with pytest.raises(UserError, match="freeze would lock the cutover out"):
        derive(m, environ=ENV)


def test_rfc2136_needs_a_key() -> None:
    m = load_manifest(MANIFEST)
    assert m.cutover is not None
    m = replace(m, cutover=replace(m.cutover, dns=replace(
        m.cutover.dns, provider="rfc2136", server="127.0.0.1:53")))
    with pytest.raises(UserError, match="rfc2136 needs dns.server and dns.tsig_key"):
        derive(m, environ=ENV)


def test_dump_format_copy_is_read_and_a_typo_points_at_its_column() -> None:
    base = MANIFEST.read_text()
    ok = load_manifest_text(base.replace("  strategy: replicate",
                                         "  strategy: dump\n  dump_format: copy"), "m.yaml")
    assert ok.cutover is not None and ok.cutover.dump_format == "copy"
    text = base.replace("  strategy: replicate", "  strategy: dump\n  dump_format: cpoy")
    line = text.splitlines().index("  dump_format: cpoy") + 1
    with pytest.raises(UserError) as exc:
        load_manifest_text(text, "m.yaml")
    [problem] = [p for p in exc.value.problems if "cpoy" in p.message]
    assert (problem.location.line, problem.location.col) == (line, 16)
    assert str(problem).startswith(f"m.yaml:{line}:16")
    assert "copy, directory, stream" in problem.message
    assert "\n" not in str(problem)
