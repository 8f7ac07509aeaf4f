"""Passwords in a cutover, on real PostgreSQL clusters: the subscription logs
in with a replication role made for the cutover (one-time password, dropped
afterwards), never as the old server's superuser; pg tools get passwords
through a private passfile, never PGPASSWORD."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cutover import db_replicate, pg
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import rollback_cutover, run_cutover
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import SUPER_PASSWORD, Cluster, Knot, Site, cutover_manifest

ROLE = db_replicate.ROLE


def _subscription_conninfo(new: Cluster) -> list[str]:
    return [str(r[0]) for r in new.sql("SELECT subconninfo FROM pg_subscription")]


def _has_role(c: Cluster) -> bool:
    return bool(c.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)))


class Stop(Exception):
    pass


def test_subscription_never_holds_the_superuser_password(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    seen: list[str] = []

    def after(step: str) -> None:
        for info in _subscription_conninfo(new):
            seen.append(info)
            assert SUPER_PASSWORD not in info
            assert f"user='{ROLE}'" in info and "user='postgres'" not in info
        if _has_role(old):
            # a plain login: replication and reading, nothing more
            assert old.sql("SELECT rolsuper, rolreplication, rolcanlogin, "
                           "left(rolpassword, 14) FROM pg_authid WHERE rolname = %s",
                           (ROLE,)) == [(False, True, True, "SCRAM-SHA-256$")]
        assert not _has_role(new), "the replication role was copied to the new server"

    state = run_cutover(cfg, provider_for(cfg), tmp_path / "state.json", say=print,
                        start_now=True, after_step=after)
    assert state.complete
    assert seen, "the subscription was never seen"
    assert not _has_role(old) and not _has_role(new)
    assert not old.sql("SELECT 1 FROM pg_stat_activity WHERE usename = %s", (ROLE,))


def test_rollback_drops_the_replication_role(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"

    def stop(step: str) -> None:
        if step == "db_replication_setup":
            raise Stop(step)

    with pytest.raises(Stop):
        run_cutover(cfg, dns, path, say=print, start_now=True, after_step=stop)
    assert _has_role(old) and _subscription_conninfo(new)
    rollback_cutover(cfg, dns, path, say=print)
    assert not _subscription_conninfo(new)
    assert not _has_role(old)
    assert not old.sql("SELECT 1 FROM pg_replication_slots")


def test_pg_tools_get_a_private_passfile_not_pgpassword(pg_pair: tuple[Cluster, Cluster],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    old, _ = pg_pair
    conn = old.conn()
    out = pg.tool(["sh", "-c", 'env; stat -c "mode=%a" "$PGPASSFILE" "$(dirname "$PGPASSFILE")"'],
                  conn)
    assert "PGPASSWORD" not in out and SUPER_PASSWORD not in out
    passfile = next(line.split("=", 1)[1] for line in out.splitlines()
                    if line.startswith("PGPASSFILE="))
    assert "mode=600" in out and "mode=700" in out
    assert not Path(passfile).exists() and not Path(passfile).parent.exists()
    # psql (scripts with meta-commands) the same way, and it really logs in with it
    rows = pg.query(conn, "\\! env\nSELECT current_user;")
    flat = [cell for row in rows for cell in row]
    assert "postgres" in flat and not any("PGPASSWORD" in cell for cell in flat)
    assert any(cell.startswith("PGPASSFILE=") for cell in flat)
    # pg_dump authenticates through it (scram-sha-256 on host lines)
    assert "CREATE TABLE public.employees" in pg.tool(
        ["pg_dump", "--schema-only", "-t", "employees"], conn)
