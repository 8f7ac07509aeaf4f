"""A failed gate stops the run; rollback restores DNS (address and TTL),
takes the maintenance page down and lets the app write on the old server."""

from __future__ import annotations

import base64
from pathlib import Path

import psycopg
import pytest

from builder.cutover import verify
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import rollback_cutover, run_cutover, status_doc
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    APP_PASSWORD,
    NEW_ADDR,
    PARTITIONED,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
)


def _nothing_changed(old: Cluster, new: Cluster, knot: Knot) -> None:
    """A run refused in pre-flight: TTL, publication and subscription untouched."""
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)
    assert not old.sql("SELECT 1 FROM pg_publication")
    assert not new.sql("SELECT 1 FROM pg_subscription")


def _old_site_status(site: Site) -> int:
    return verify.fetch(site.url, "/", SERVER_NAME)[0]


def test_failed_gate_after_switch_and_rollback(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    """A row changed on the new server behind the cutover's back: counts still
    match, the content checksum (configured after the switch) does not."""
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, checksum_when="after_switch"))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"

    def tamper(step: str) -> None:
        if step == "db_detach":
            new.sql("UPDATE employees SET salary = 0 WHERE id = 7")

    with pytest.raises(UserError, match=r"gate failed: table checksums.*public\.employees"):
        run_cutover(cfg, dns, path, say=print, start_now=True, after_step=tamper)
    steps = {s["name"]: s["status"] for s in status_doc(cfg, path)["steps"]}
    assert steps["dns_switch"] == "done" and steps["verify_checksums"] == "failed"
    assert knot.query(f"{SERVER_NAME}.") == ((NEW_ADDR,), 5)
    assert _old_site_status(sites[0]) == 503

    state = rollback_cutover(cfg, dns, path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)  # address and TTL back
    assert not sites[0].flag.exists()
    assert _old_site_status(sites[0]) == 200
    with psycopg.connect(old.dsn(user="app", password=APP_PASSWORD), autocommit=True) as c:
        c.execute("INSERT INTO writes (n) VALUES (424242)")
    assert state.facts.rolled_back_at and state.next_step == "preflight"
    assert not old.sql("SELECT 1 FROM pg_replication_slots")
    assert not old.sql("SELECT 1 FROM pg_publication")


def test_failed_smoke_gate_before_dns_and_rollback(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    # The old site has /employees in its Rails page cache; on the new one it goes
    # to the app servers, which are not running: nginx answers 502.
    (sites[0].static_root / "employees.html").write_text("<h1>employees</h1>\n")
    cfg = derive(cutover_manifest(old, new, knot, sites, smoke_paths=("/health", "/employees")))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"
    with pytest.raises(UserError, match=r"smoke test .* /employees → 502"):
        run_cutover(cfg, dns, path, say=print, start_now=True)
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 5)  # only the TTL moved
    assert old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(False,)]
    rollback_cutover(cfg, dns, path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)
    assert old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    assert _old_site_status(sites[0]) == 200
    assert not new.sql("SELECT 1 FROM pg_subscription")


def test_missing_uploads_source_is_refused_before_anything_changes(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    missing = uploads[0].with_name("gone")
    cfg = derive(cutover_manifest(old, new, knot, sites, (missing, uploads[1])))
    with pytest.raises(UserError, match=r"pre-flight check failed: files: the old uploads "
                                        r"directory exists: .*gone is not a directory here"):
        run_cutover(cfg, provider_for(cfg), tmp_path / "state.json", say=print, start_now=True)
    _nothing_changed(old, new, knot)
    assert not uploads[1].exists()


def test_retry_after_rollback_keeps_the_original_ttl(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    """The retry finds the record still at the low TTL (its restore was lost):
    the record's original TTL is the one the first run read, not the low one.
    The retry copies the schema again over a partitioned table with a primary
    key (which `--clean --if-exists` alone cannot drop)."""
    old, new = pg_pair
    old.sql(PARTITIONED)
    (sites[0].static_root / "employees.html").write_text("<h1>employees</h1>\n")
    cfg = derive(cutover_manifest(old, new, knot, sites, smoke_paths=("/health", "/employees")))
    dns = provider_for(cfg)
    path = tmp_path / "state.json"
    with pytest.raises(UserError, match="smoke test"):
        run_cutover(cfg, dns, path, say=print, start_now=True)
    rollback_cutover(cfg, dns, path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)
    dns.set("127.0.0.1", 5)
    with pytest.raises(UserError, match="smoke test"):
        run_cutover(cfg, dns, path, say=print, start_now=True)
    doc = status_doc(cfg, path)
    assert doc["steps"][1]["detail"].endswith("TTL 300 s → 5 s")
    assert {s["name"]: s["status"] for s in doc["steps"]}["db_replication_setup"] == "done"
    assert new.sql("SELECT count(*) FROM timesheets") == [(24,)]
    rollback_cutover(cfg, dns, path, say=print)
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)


def _wrong_key(monkeypatch: pytest.MonkeyPatch, knot: Knot) -> None:
    k = knot.key
    wrong = base64.b64encode(b"not the key knot has, 32 bytes!!").decode()
    assert wrong != k.secret
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_TSIG", f"{k.name}:{k.algorithm}:{wrong}")


def test_wrong_tsig_key_is_found_in_preflight(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pg_pair
    _wrong_key(monkeypatch, knot)
    cfg = derive(cutover_manifest(old, new, knot, sites))
    with pytest.raises(UserError, match=r"pre-flight check failed: DNS record can be updated: "
                                        r".*refused the TSIG key"):
        run_cutover(cfg, provider_for(cfg), tmp_path / "state.json", say=print, start_now=True)
    _nothing_changed(old, new, knot)
    assert not sites[0].flag.exists()


def test_rollback_reopens_the_old_site_when_dns_cannot_be_restored(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pg_pair
    (sites[0].static_root / "employees.html").write_text("<h1>employees</h1>\n")
    manifest = cutover_manifest(old, new, knot, sites, smoke_paths=("/health", "/employees"))
    cfg = derive(manifest)
    path = tmp_path / "state.json"
    with pytest.raises(UserError, match="smoke test"):
        run_cutover(cfg, provider_for(cfg), path, say=print, start_now=True)
    assert _old_site_status(sites[0]) == 503
    _wrong_key(monkeypatch, knot)
    bad = derive(manifest)
    with pytest.raises(UserError, match=r"rollback could not undo: dns_restore \(.*TSIG"):
        rollback_cutover(bad, provider_for(bad), path, say=print)
    # the old site is back and writable, though DNS still has the low TTL
    assert _old_site_status(sites[0]) == 200
    assert old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 5)
    assert not new.sql("SELECT 1 FROM pg_subscription")  # the step after DNS still ran
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_TSIG",
                       f"{knot.key.name}:{knot.key.algorithm}:{knot.key.secret}")
    state = rollback_cutover(cfg, provider_for(cfg), path, say=print)  # only DNS is left
    assert knot.query(f"{SERVER_NAME}.") == (("127.0.0.1",), 300)
    assert state.facts.rolled_back_at and state.next_step == "preflight"
    assert [e["step"] for e in state.events if e["event"] == "done"][-2:] == [
        "dns_restore", "rollback"]
