"""The new db role ready to receive (cutover.receive): the db role's rendered
cutover-login script, run against a real PostgreSQL 15 cluster, admits the
cutover's login from its address; the cutover's last step takes LOGIN away;
the script's next run drops the role and its pg_hba line for good."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from builder.cutover.config import derive
from builder.cutover.login import retire
from builder.cutover.steps import forward_steps
from builder.manifest.model import CutoverLogin, DbEndpoint, Manifest, SecretRef
from builder.render import cutover_login
from builder.render.base import roles_json
from builder.render.role import role_fragments
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    PG_OS_USER,
    ROOT,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
    destroy_cluster,
    start_cluster,
)
from tests.manifest_problems import problems_with

LOGIN, PASSWORD = "amibake_cutover", "it's a \\ secret"


@pytest.fixture
def socket_cluster(pg_template: Path) -> Iterator[tuple[Cluster, Path]]:
    """A cluster with a unix socket (the script runs psql as postgres over it)
    and a pg_hba.conf that admits only postgres over TCP until the rendered line."""
    sock = Path(tempfile.mkdtemp(prefix="amibake-sock-"))
    shutil.chown(sock, PG_OS_USER, PG_OS_USER)
    os.chmod(sock, 0o755)
    c = start_cluster(pg_template, "login", (f"unix_socket_directories = '{sock}'",))
    (c.data / "pg_hba.conf").write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 scram-sha-256\n")
    shutil.chown(c.data / "pg_hba.conf", PG_OS_USER, PG_OS_USER)
    c.sql("SELECT pg_reload_conf()", dbname="postgres")
    c.sql("CREATE DATABASE payroll", dbname="postgres")
    try:
        yield c, sock
    finally:
        destroy_cluster(c)
        shutil.rmtree(sock, ignore_errors=True)


def _manifest(old: Cluster, new: Cluster, knot: Knot, sites: tuple[Site, Site]) -> Manifest:
    m = cutover_manifest(old, new, knot, sites, strategy="dump",
                         receive=CutoverLogin(from_address="127.0.0.1/32", tls=False))
    assert m.cutover is not None
    cut = replace(m.cutover, new_db=DbEndpoint(
        host="127.0.0.1", port=new.port, dbname="payroll", user=LOGIN,
        password=SecretRef("ssm", "/test/cutover-login")))
    pg = m.components.postgresql
    assert pg is not None
    return replace(m, cutover=cut, components=replace(
        m.components, postgresql=replace(pg, port=new.port)))


def _run_script(script: Path, cluster: Cluster, sock: Path, state: Path, secret_tool: Path,
                *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMIBAKE_PG_HBA": str(cluster.data / "pg_hba.conf"),
           "AMIBAKE_PSQL_HOST": str(sock), "AMIBAKE_STATE_DIR": str(state),
           "AMIBAKE_SECRET_TOOL": str(secret_tool)}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True,
                          text=True, check=False)


def _can_login(cluster: Cluster) -> str:
    try:
        with psycopg.connect(host="127.0.0.1", port=cluster.port, dbname="payroll", user=LOGIN,
                             password=PASSWORD, connect_timeout=5) as c:
            return str(c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                       .fetchone())
    except psycopg.OperationalError as exc:
        return f"refused: {exc}"


def test_rendered_login_admits_then_the_cutover_retires_it(
    pg_pair: tuple[Cluster, Cluster], socket_cluster: tuple[Cluster, Path], knot: Knot,
    sites: tuple[Site, Site], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, _ = pg_pair
    new, sock = socket_cluster
    m = _manifest(old, new, knot, sites)
    frags = role_fragments(m, "db")
    assert [f.component for f in frags] == ["postgresql", "cutover_login"]
    login = frags[-1]
    assert login.setup == (cutover_login.SETUP,)
    doc = json.loads(roles_json(m, {"db": frags}))
    assert doc["secrets"]["cutover_password"] == {"store": "ssm", "name": "/test/cutover-login"}
    script = tmp_path / "cutover-login.sh"
    script.write_bytes(login.files[0].content)
    # amibake-secret stand-in: prints the named secret (as the real tool does)
    secret_tool = tmp_path / "secret"
    secret_tool.write_text("#!/bin/sh\n[ \"$1\" = cutover_password ] || exit 1\n"
                           f"cat {tmp_path / 'pw'}\n")
    (tmp_path / "pw").write_text(PASSWORD)
    secret_tool.chmod(secret_tool.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state"

    assert _can_login(new).startswith("refused")  # nothing admits it before the script
    r = _run_script(script, new, sock, state, secret_tool)
    assert r.returncode == 0, r.stderr
    assert _can_login(new) == "(True,)", (new.data / "pg_hba.conf").read_text() + r.stderr
    hba = (new.data / "pg_hba.conf").read_text()
    assert f"host  all  {LOGIN}  127.0.0.1/32  scram-sha-256" in hba.splitlines()
    r = _run_script(script, new, sock, state, secret_tool)  # a second boot: nothing doubles
    assert r.returncode == 0, r.stderr
    assert (new.data / "pg_hba.conf").read_text() == hba

    # the cutover's last step, connected as the login itself
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_CUTOVER_LOGIN", PASSWORD)
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_OLD_DB", "cutover-super-secret")
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_TSIG", f"{knot.key.name}:{knot.key.algorithm}:"
                                                   f"{knot.key.secret}")
    cfg = derive(m)
    assert forward_steps(cfg)[-1].name == "retire_cutover_login"
    assert "NOLOGIN" in retire(cfg)
    assert "not permitted to log in" in _can_login(new)
    assert "NOLOGIN" in retire(cfg)  # a retry finds it done
    # the next boot drops the role and the line, and never creates them again
    r = _run_script(script, new, sock, state, secret_tool)
    assert r.returncode == 0, r.stderr
    assert new.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{LOGIN}'", dbname="postgres") == []
    assert LOGIN not in (new.data / "pg_hba.conf").read_text()
    assert (state / "cutover-login-removed").exists()
    r = _run_script(script, new, sock, state, secret_tool)
    assert r.returncode == 0, r.stderr
    assert _can_login(new).startswith("refused")


def test_no_receive_no_hook(pg_pair: tuple[Cluster, Cluster], knot: Knot,
                            sites: tuple[Site, Site]) -> None:
    old, new = pg_pair
    m = cutover_manifest(old, new, knot, sites)
    assert [f.component for f in role_fragments(m, "db")] == ["postgresql"]
    assert "cutover_password" not in json.loads(roles_json(m, {}))["secrets"]


@pytest.mark.parametrize(("receive", "message"), [
    ("  receive: {from_address: 10.1.2.0/24}\n", "wider than one address"),
    ("  receive: {from_address: 10.1.2.3}\n", "needs a prefix length"),
    ("  receive: {from_address: \"10.1.2.3/32\\nhost all all 0.0.0.0/0 trust\"}\n",
     "not a CIDR"),
])
def test_receive_checked_at_load(tmp_path: Path, receive: str, message: str) -> None:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    new_login = "    user: postgres\n    password: {ssm: /smallpayroll/new-db"
    assert new_login in text
    text = text.replace(new_login, new_login.replace("postgres", LOGIN))
    shown, line = problems_with(tmp_path, receive, text=text)
    assert len(shown) == 1 and message in shown[0], shown
    assert f"m.yaml:{line}:" in shown[0]


def test_receive_needs_its_own_login(tmp_path: Path) -> None:
    shown, _ = problems_with(tmp_path, "  receive: {from_address: 10.1.2.3/32}\n")
    assert len(shown) == 1 and "not postgres" in shown[0]  # smallpayroll's new_db.user
