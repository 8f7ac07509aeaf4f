"""Strategy `dump` end to end: amibake's own COPY, directory format with -j, and
streamed."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cutover import verify
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import run_cutover
from builder.cutover.state import CutoverState
from builder.cutover.steps import forward_steps
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    PARTITIONED,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
    run_under_writer,
)


@pytest.mark.parametrize("dump_format", ["copy", "directory", "stream"])
def test_dump_end_to_end_with_writes(
    dump_format: str, pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, uploads, strategy="dump",
                                  dump_format=dump_format, dump_jobs=2))
    state, writer = run_under_writer(cfg, old, new, tmp_path / "s.json")
    assert state.complete
    assert "db_dump_restore" in [r.name for r in state.steps]
    gate = next(r.detail for r in state.steps if r.name == "verify_db")
    # copy: the gate reads the rows each COPY moved, not a count of every table
    assert ("each COPY sent" in gate) == (dump_format == "copy")
    assert "row counts: 3 equal" in gate
    have = {r[0] for r in new.sql("SELECT n FROM writes")}
    assert writer.acked and set(writer.acked) <= have
    assert writer.refused > 0
    old_sums, new_sums = verify.both(verify.table_checksums, cfg.old, cfg.new)
    assert set(old_sums) == {"public.employees", "public.payslips", "public.writes"}
    # writes table differs only by what the app wrote to the new server after the switch
    assert old_sums["public.employees"] == new_sums["public.employees"]
    assert old_sums["public.payslips"] == new_sums["public.payslips"]
    assert knot.query(f"{SERVER_NAME}.")[0] == (NEW_ADDR,)
    assert new.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]


def test_dump_crash_and_resume_at_every_step(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    old.sql(PARTITIONED)  # the resume inside db_dump_restore restores over it again
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump"))
    names = [s.name for s in forward_steps(cfg)]
    assert "db_dump_restore" in names and "db_replication_setup" not in names
    path = tmp_path / "s.json"
    dns = provider_for(cfg)
    for k, name in enumerate(names):
        def crash(step: str, name: str = name) -> None:
            if step == name:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            run_cutover(cfg, dns, path, say=lambda s: None, start_now=True, after_step=crash)
        assert CutoverState.load(path).steps[k].status == "running"
    state = run_cutover(cfg, dns, path, say=lambda s: None, start_now=True)
    assert state.complete
    old_sums, new_sums = verify.both(verify.table_checksums, cfg.old, cfg.new)
    assert old_sums == new_sums and "public.timesheets" in new_sums
    assert verify.sequences(cfg.old) == verify.sequences(cfg.new)
