"""Strategy `replicate` end to end on real servers: writes running through
the cutover, nothing acknowledged lost, writes refused after the freeze."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from builder.cutover import db_replicate, verify
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import run_cutover, status_doc
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    APP_PASSWORD,
    NEW_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    Writer,
    cutover_manifest,
)


def _acked_on(cluster: Cluster, acked: list[int]) -> set[int]:
    have = {r[0] for r in cluster.sql("SELECT n FROM writes")}
    return set(acked) - have


def test_replicate_end_to_end_with_writes(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, uploads))
    dns = provider_for(cfg)
    state_path = tmp_path / "state.json"
    writer = Writer(old)
    writer.start()
    refused_after_freeze: list[str] = []

    def after(step: str) -> None:
        if step == "db_freeze":
            # the app role is refused on the old server from now on
            with pytest.raises(psycopg.OperationalError) as exc:
                psycopg.connect(old.dsn(user="app", password=APP_PASSWORD))
            refused_after_freeze.append(str(exc.value))
            status, headers, _ = verify.fetch(sites[0].url, "/", SERVER_NAME)
            assert status == 503 and headers["retry-after"] == "300"
        if step == "dns_switch":
            writer.target = new  # resolvers now send the app to the new site

    try:
        state = run_cutover(cfg, dns, state_path, say=print, start_now=True, after_step=after)
    finally:
        writer.stop()
    assert state.complete
    assert refused_after_freeze and "not permitted to log in" in refused_after_freeze[0]
    # every acknowledged insert is on the new server; some happened before the freeze
    assert writer.acked and not _acked_on(new, writer.acked)
    assert writer.refused > 0
    acked_on_old = {r[0] for r in old.sql("SELECT n FROM writes")}
    assert acked_on_old and acked_on_old <= set(writer.acked)
    # the sequence continues on the new server past every id used on the old one
    max_old = old.sql("SELECT max(id) FROM writes")[0][0]
    nxt = new.sql("INSERT INTO writes (n) VALUES (-1) RETURNING id")[0][0]
    assert nxt > max_old
    # replication is gone from both sides
    assert not new.sql("SELECT 1 FROM pg_subscription")
    assert not old.sql("SELECT 1 FROM pg_replication_slots")
    assert not old.sql("SELECT 1 FROM pg_publication")
    # DNS moved, with the low TTL, on both authoritative addresses
    assert knot.query(f"{SERVER_NAME}.", "127.0.0.1") == ((NEW_ADDR,), 5)
    assert knot.query(f"{SERVER_NAME}.", NEW_ADDR) == ((NEW_ADDR,), 5)
    # files arrived
    assert sorted(p.name for p in uploads[1].rglob("*")) == sorted(
        p.name for p in uploads[0].rglob("*"))
    # downtime measured from the recorded events
    doc = status_doc(cfg, state_path)
    assert doc["complete"] and doc["downtime_s"] is not None and doc["downtime_s"] > 0
    assert [s["status"] for s in doc["steps"]] == ["done"] * len(doc["steps"])
    assert db_replicate.NAME not in str(old.sql("SELECT slot_name FROM pg_replication_slots"))
