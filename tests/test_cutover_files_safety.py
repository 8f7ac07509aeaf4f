"""The cutover's rsync and ssh settings are checked again when they are used
(whatever the loader let through): an empty or system destination never
reaches `rsync --delete`, and ssh options that run local commands
(ProxyCommand and friends) never reach ssh, not even in a dry run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builder.cutover import files, maintenance, procedure, remote
from builder.cutover.config import TsigKey, derive
from builder.errors import UserError
from builder.manifest.model import FilesSync
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import SUPER_PASSWORD, Cluster, Knot, Site, Sshd, cutover_manifest

ENV = {"AMIBAKE_SECRET_TEST_OLD_DB": SUPER_PASSWORD,
       "AMIBAKE_SECRET_TEST_NEW_DB": SUPER_PASSWORD,
       "AMIBAKE_SECRET_TEST_TSIG": "k.:hmac-sha256:AAAA"}


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every command the cutover modules would run, recorded and not run."""
    ran: list[list[str]] = []

    def record(cmd: Any, **_: Any) -> Any:
        ran.append([str(c) for c in cmd])
        raise AssertionError(f"a command was run: {cmd}")

    monkeypatch.setattr(files, "run", record)
    monkeypatch.setattr(remote, "run", record)  # the maintenance switch and migrations
    return ran


@pytest.mark.parametrize("destination", ["", "/", "/etc", "/var/lib", "/usr", "srv/uploads",
                                         "/srv/../etc", "host:/", "host:", "-e sh", "/srv/a b"])
def test_unsafe_destination_never_reaches_rsync(uploads: tuple[Path, Path], destination: str,
                                                no_commands: list[list[str]]) -> None:
    src, _ = uploads
    spec = FilesSync(source=str(src), destination=destination)
    for action in (files.sync, files.verify):
        with pytest.raises(UserError, match="cutover.files.destination"):
            action(spec)
    assert no_commands == []
    assert sorted(p.name for p in src.iterdir())[:2] == ["avatars", "slip-000.pdf"]


@pytest.mark.parametrize("source", ["", "/", "/etc", "relative"])
def test_unsafe_source_is_refused(uploads: tuple[Path, Path], source: str,
                                  no_commands: list[list[str]]) -> None:
    spec = FilesSync(source=source, destination=str(uploads[1]))
    with pytest.raises(UserError, match="cutover.files.source"):
        files.sync(spec)
    assert no_commands == []


def test_paths_follow_double_dash_and_protect_args(uploads: tuple[Path, Path]) -> None:
    """A directory named like an option is a path to rsync, not an option."""
    src, dst = uploads
    dashed = src.parent / "-n"
    src.rename(dashed)
    spec = FilesSync(source=str(dashed), destination=str(dst))
    cmd = files.rsync_cmd(spec)
    assert "--protect-args" in cmd and cmd[-3] == "--"
    files.sync(spec)
    assert (dst / "slip-000.pdf").read_bytes() == (dashed / "slip-000.pdf").read_bytes()


@pytest.mark.parametrize("options", [
    ("-o", "ProxyCommand=touch {canary}"),
    ("-oProxyCommand=touch {canary}",),
    ("-o", "LocalCommand=touch {canary}", "-o", "PermitLocalCommand=yes"),
    ("-o", "KnownHostsCommand=touch {canary}"),
    ("-F", "{canary}"),
])
def test_ssh_options_that_run_commands_are_refused_at_run_time(
        uploads: tuple[Path, Path], sshd: Sshd, tmp_path: Path, options: tuple[str, ...]) -> None:
    """Real ssh and a real sshd: with the check gone, ProxyCommand would run."""
    src, dst = uploads
    canary = tmp_path / "canary"
    opts = (*sshd.options, *(o.format(canary=canary) for o in options))
    spec = FilesSync(source=sshd.remote(src), destination=str(dst), transport="ssh",
                     ssh_options=opts)
    with pytest.raises(UserError, match="ssh_options: .*not allowed|ssh_options: -o takes"):
        files.sync(spec)
    assert not canary.exists() and not dst.exists()


def test_maintenance_refuses_unsafe_ssh(sites: tuple[Site, Site], sshd: Sshd,
                                        tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    idle = Cluster("unused", Path("/nonexistent"), 9)
    knot = Knot(Path("/nonexistent"), 9, TsigKey("k.", "hmac-sha256", "AAAA"))
    m = cutover_manifest(idle, idle, knot, sites, old_web=f"ssh:{sshd.login}",
                         old_web_ssh_options=(*sshd.options, "-o",
                                              f"ProxyCommand=touch {canary}"))
    with pytest.raises(UserError, match="old_web_ssh_options"):
        maintenance.switch(derive(m, environ=ENV), True)
    assert m.cutover is not None
    hostile = replace(m, cutover=replace(m.cutover, old_web=f"ssh:-oProxyCommand=touch {canary}",
                                         old_web_ssh_options=sshd.options))
    with pytest.raises(UserError, match="old_web"):
        maintenance.switch(derive(hostile, environ=ENV), True)
    assert not canary.exists() and not sites[0].flag.exists()


def test_dry_run_runs_no_command(sites: tuple[Site, Site], uploads: tuple[Path, Path],
                                 tmp_path: Path, no_commands: list[list[str]]) -> None:
    """`cutover run --dry-run` describes the rsync and ssh steps, runs neither."""
    canary = tmp_path / "canary"
    idle = Cluster("unused", Path("/nonexistent"), 9)
    knot = Knot(Path("/nonexistent"), 9, TsigKey("k.", "hmac-sha256", "AAAA"))
    m = cutover_manifest(idle, idle, knot, sites, uploads, old_web="ssh:deploy@old-web",
                         old_web_ssh_options=("-o", f"ProxyCommand=touch {canary}"))
    assert m.cutover is not None and m.cutover.files is not None
    m = replace(m, cutover=replace(m.cutover, files=replace(
        m.cutover.files, destination="/", transport="ssh",
        ssh_options=("-o", f"ProxyCommand=touch {canary}"))))
    cfg = derive(m, environ=ENV)
    for rollback in (False, True):
        rows = procedure.dry_run(cfg, _NoDns(), tmp_path / "state.json", rollback=rollback)
        assert rows and all(r["status"] == "pending" for r in rows)
    assert no_commands == [] and not canary.exists()


class _NoDns:
    """Dry runs never ask DNS: any call fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"DNS was asked: {name}")


@pytest.mark.parametrize(("flag", "page"), [
    ("/etc/nginx/maintenance", "/srv/site/index.html"),
    ("/srv/site/on", "/etc/../usr/bin/sudo"),
    ("/srv/site/on", "/"),
])
def test_maintenance_paths_are_checked_when_written(tmp_path: Path, flag: str, page: str,
                                                    no_commands: list[list[str]]) -> None:
    idle = Cluster("unused", Path("/nonexistent"), 9)
    knot = Knot(Path("/nonexistent"), 9, TsigKey("k.", "hmac-sha256", "AAAA"))
    site = Site("127.0.0.1", 9, tmp_path, tmp_path, tmp_path / "flag", tmp_path / "page")
    m = cutover_manifest(idle, idle, knot, (site, site))
    nginx = m.components.nginx
    assert nginx is not None
    m = replace(m, components=replace(m.components, nginx=replace(
        nginx, maintenance_flag=flag, maintenance_page=page)))
    cfg = derive(m, environ=ENV)
    for on in (True, False):
        with pytest.raises(UserError, match="components.nginx.maintenance_"):
            maintenance.switch(cfg, on)
    assert not Path(flag).exists() or flag == "/"
    assert no_commands == []
