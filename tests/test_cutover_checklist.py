"""The checklist around the window: the rollback point (a fresh dump of the
old database before anything changes) and the TTL raised back after the
watch period (`cutover finish`), with real PostgreSQL and Knot."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest

from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import finish_cutover, run_cutover, status_doc, status_text
from builder.cutover.state import CutoverState, NotYet
from builder.cutover.steps import forward_steps
from builder.errors import UserError
from builder.proc import run
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    OLD_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
)
from tests.manifest_problems import problems_with


def test_rollback_dump_then_ttl_raised_after_the_watch(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    keep_dir = tmp_path / "rollback-point"
    m = cutover_manifest(old, new, knot, sites, strategy="dump", rollback_dump=str(keep_dir))
    cfg = derive(m)
    names = [s.name for s in forward_steps(cfg)]
    assert names.index("preflight") < names.index("backup_old") < names.index("dns_lower_ttl")
    path = tmp_path / "s.json"
    dns = provider_for(cfg)

    # the rollback point is taken before anything changes: stop right after it
    def stop(step: str) -> None:
        if step == "backup_old":
            assert knot.query(f"{SERVER_NAME}.") == ((OLD_ADDR,), 300)
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        run_cutover(cfg, dns, path, say=print, start_now=True, after_step=stop)
    old.sql("INSERT INTO employees (name, salary) VALUES ('after the dump', 1)")
    state = run_cutover(cfg, dns, path, say=print, start_now=True)
    assert state.complete
    dumps = list(keep_dir.iterdir())
    assert len(dumps) == 1 and dumps[0].suffix == ".dump"  # the resume kept the first one
    assert state.facts.rollback_dump == str(dumps[0])
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    listing = run(["pg_restore", "--list", dumps[0]], capture=True).stdout
    assert "TABLE DATA public employees" in listing
    data = run(["pg_restore", "-f", "-", "--data-only", "-t", "employees", dumps[0]],
               capture=True).stdout
    assert "employee 500" in data and "after the dump" not in data

    # the watch: the TTL stays low until dns.raise_ttl_after has passed
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 5)
    assert "`amibake cutover finish` raises the TTL back" in status_text(status_doc(cfg, path))
    with pytest.raises(UserError, match="still watching"):
        finish_cutover(cfg, dns, path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 5)

    done = derive(replace(m, cutover=replace(m.cutover, dns=replace(  # type: ignore[arg-type]
        m.cutover.dns, raise_ttl_after=0))))  # type: ignore[union-attr]
    state = finish_cutover(done, provider_for(done), path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 300)  # the TTL from before
    assert state.facts.ttl_raised_at
    assert CutoverState.load(path).facts.ttl_raised_at == state.facts.ttl_raised_at
    finish_cutover(done, provider_for(done), path, say=print)  # again: nothing changes
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 300)

    # a manifest's final_ttl wins; a record moved by hand is left alone
    final = derive(replace(m, cutover=replace(m.cutover, dns=replace(  # type: ignore[arg-type]
        m.cutover.dns, raise_ttl_after=0, final_ttl=900))))  # type: ignore[union-attr]
    finish_cutover(final, provider_for(final), path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 900)
    provider_for(final).set(OLD_ADDR, 60)
    with pytest.raises(UserError, match="not the new site"):
        finish_cutover(final, provider_for(final), path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == ((OLD_ADDR,), 60)


def test_finish_refuses_an_unfinished_cutover(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump"))
    path = tmp_path / "s.json"
    with pytest.raises(NotYet):  # stops at await_window
        run_cutover(cfg, provider_for(cfg), path, say=print)
    assert not CutoverState.load(path).complete
    with pytest.raises(UserError, match="not complete"):
        finish_cutover(cfg, provider_for(cfg), path, say=print)
    assert knot.query(f"{SERVER_NAME}.")[0] == (OLD_ADDR,)


@pytest.mark.parametrize(("setting", "message"), [
    ("  rollback_dump: /etc/amibake-dumps\n", "inside /etc"),
    ("  rollback_dump: \"/srv/dumps\\n/etc\"\n", "ASCII letters"),
])
def test_rollback_dump_checked_at_load(tmp_path: Path, setting: str, message: str) -> None:
    shown, line = problems_with(tmp_path, setting)
    assert len(shown) == 1 and message in shown[0] and f"m.yaml:{line}:" in shown[0], shown
