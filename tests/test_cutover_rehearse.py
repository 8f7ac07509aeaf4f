"""`cutover rehearse`: production copied, gated and smoke-tested, timed, and
the new server reset; production and DNS untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cutover import plan
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import plan_doc
from builder.cutover.rehearse import figures_path, load_figures, rehearse
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    OLD_ADDR,
    PARTITIONED,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    Writer,
    cutover_manifest,
)


def _production(old: Cluster, knot: Knot) -> dict[str, object]:
    return {
        "employees": old.sql("SELECT count(*) FROM employees"),
        "payslips": old.sql("SELECT count(*) FROM payslips"),
        "publications": old.sql("SELECT pubname FROM pg_publication"),
        "slots": old.sql("SELECT slot_name FROM pg_replication_slots"),
        "app_login": old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'"),
        "roles": old.sql("SELECT rolname FROM pg_roles ORDER BY 1"),
        "dns": knot.query(f"{SERVER_NAME}."),
    }


def _new_server(new: Cluster) -> dict[str, object]:
    return {
        "tables": new.sql("SELECT relname FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE n.nspname = 'public'"),
        "roles": new.sql("SELECT rolname FROM pg_roles ORDER BY 1"),
        "db": new.sql("SELECT pg_get_userbyid(datdba), encoding, datcollate FROM pg_database "
                      "WHERE datname = 'payroll'", dbname="postgres"),
    }


@pytest.mark.parametrize(("strategy", "dump_format"),
                         [("dump", "directory"), ("dump", "copy"), ("replicate", "directory")])
def test_rehearse_leaves_production_and_dns_alone_and_resets_the_new_server(
    strategy: str, dump_format: str, pg_pair: tuple[Cluster, Cluster], knot: Knot,
    sites: tuple[Site, Site], uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    old.sql(PARTITIONED)
    cfg = derive(cutover_manifest(old, new, knot, sites, uploads, strategy=strategy,
                                  dump_format=dump_format))
    before_old, before_new = _production(old, knot), _new_server(new)
    assert before_old["dns"] == ((OLD_ADDR,), 300)
    # the app keeps writing through the rehearsal: nothing is frozen, and the
    # gates still pass (the copy and the old side are compared in one snapshot)
    writer = Writer(old)
    writer.start()
    save = figures_path(tmp_path / "s.json")
    try:
        doc = rehearse(cfg, provider_for(cfg), say=print, save_to=save)
    finally:
        writer.stop()
    assert writer.acked and writer.refused == 0
    assert _production(old, knot) == before_old
    assert _new_server(new) == before_new
    assert (uploads[1] / "avatars" / "pat.png").exists()  # uploads kept for the real run
    steps = {r["step"]: r for r in doc["steps"]}
    copy = "db_dump_restore" if strategy == "dump" else "db_initial_copy"
    assert {"preflight", "db_copy_roles", copy, "files_presync", "files_final_sync",
            "verify_db", "verify_checksums", "verify_files", "smoke_new_site"} == set(steps)
    assert "row counts: 4 equal" in steps["verify_db"]["detail"]  # partitions in their parent
    assert all(r["seconds"] >= 0 for r in doc["steps"])
    window = [r["seconds"] for r in doc["steps"] if r["phase"] == "window"]
    assert doc["window_measured_s"] == pytest.approx(sum(window), abs=0.01)
    assert doc["dns"]["touched"] is False and doc["fits_window"] is True
    assert ("db_catch_up" in doc["not_measured"]) == (strategy == "replicate")
    # the runbook shows the last rehearsal
    assert load_figures(save) == doc
    md = plan.to_markdown(plan_doc(cfg, provider_for(cfg), tmp_path / "s.json"))
    assert "## Last rehearsal" in md and f"| {copy} |" in md and "Measured window work" in md


def test_rehearse_refuses_a_new_database_that_holds_data(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    new.sql("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump"))
    with pytest.raises(UserError, match="already holds 1 table"):
        rehearse(cfg, provider_for(cfg), say=print, save_to=figures_path(tmp_path / "s.json"))
    assert new.sql("SELECT id FROM precious") == [(1,)]
    assert not figures_path(tmp_path / "s.json").exists()


def test_a_failed_gate_still_resets_the_new_server(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    before_new = _new_server(new)
    # a smoke path the new site does not serve (nginx passes it to a dead upstream)
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump",
                                  smoke_paths=("/health", "/no-such-page")))
    with pytest.raises(UserError, match="/no-such-page → 502"):
        rehearse(cfg, provider_for(cfg), say=print, save_to=figures_path(tmp_path / "s.json"))
    assert _new_server(new) == before_new
    assert old.sql("SELECT count(*) FROM employees") == [(500,)]
