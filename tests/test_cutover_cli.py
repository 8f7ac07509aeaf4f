"""`amibake cutover plan|run|status|rollback` from a YAML manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import NEW_ADDR, SERVER_NAME, Cluster, Knot, Site

ROOT = Path(__file__).resolve().parent.parent


def _manifest(tmp: Path, old: Cluster, new: Cluster, knot: Knot, sites: tuple[Site, Site],
              uploads: tuple[Path, Path]) -> Path:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    text = text[: text.index("\ncutover:")] + "\n"
    text = text.replace("    user: payroll\n", "    user: app\n")
    text = text.replace("maintenance_flag: /var/www/maintenance/on",
                        f"maintenance_flag: {sites[0].flag}")
    text = text.replace("maintenance_page: /var/www/maintenance/index.html",
                        f"maintenance_page: {sites[0].page}")
    text += f"""cutover:
  strategy: replicate
  window_start: "2026-01-10T00:00:00-05:00"
  timezone: America/New_York
  old_db: {{host: 127.0.0.1, port: {old.port}, dbname: payroll, user: postgres,
           password: {{ssm: /test/old-db}}}}
  new_db: {{host: 127.0.0.1, port: {new.port}, dbname: payroll, user: postgres,
           password: {{ssm: /test/new-db}}}}
  files: {{source: "{uploads[0]}", destination: "{uploads[1]}"}}
  dns:
    provider: rfc2136
    zone: example.com.
    record: {SERVER_NAME}.
    new_address: {NEW_ADDR}
    low_ttl: 5
    server: "127.0.0.1:{knot.port}"
    tsig_key: {{ssm: /test/tsig}}
  notice: {{contact: "Pat Doe, support@example.com"}}
  old_site: {sites[0].url}
  new_site: http://{SERVER_NAME}:{sites[1].port}/
  smoke_paths: [/health, /]
"""
    path = tmp / "payroll.yaml"
    path.write_text(text)
    return path


def test_cli_plan_dry_run_run_status(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    uploads: tuple[Path, Path], secret_env: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = pg_pair
    m = _manifest(tmp_path, old, new, knot, sites, uploads)
    state = tmp_path / "state.json"

    assert main(["cutover", "plan", str(m)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Cutover runbook (replicate)")
    assert "Friday, January 9, 2026, 11:59 pm EST (UTC-05:00)" in md  # midnight shifted
    assert "- [x] old: wal_level = logical" in md

    assert main(["cutover", "run", str(m), "--dry-run", "--state", str(state), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["dry_run"]
    assert rows[0] == {"step": "preflight", "phase": "prepare", "status": "pending",
                       "would": "connectivity, privileges, wal_level, replica identity, "
                                "free space, files source, a no-op DNS update"}
    assert not state.exists() and not old.sql("SELECT 1 FROM pg_publication")

    # without --now the run prepares everything and stops before the window
    # (the TTL was just lowered from 300 s)
    assert main(["cutover", "run", str(m), "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert "resolvers may cache the old TTL" in err and "--now" in err
    assert old.sql("SELECT pubname FROM pg_publication") == [("amibake_cutover",)]
    assert not sites[0].flag.exists()

    assert main(["cutover", "status", str(m), "--state", str(state), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["next_step"] == "await_window"
    assert {s["name"]: s["status"] for s in doc["steps"]}["await_window"] == "waiting"

    assert main(["cutover", "run", str(m), "--state", str(state), "--now"]) == 0
    out = capsys.readouterr().out
    assert "cutover (replicate): complete" in out and "downtime" in out
    assert "resolvers may return the old address for" in out

    assert main(["cutover", "status", str(m), "--state", str(state), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["complete"] and doc["downtime_s"] > 0 and doc["dns_cache_seconds_left"] >= 0


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cutover", "status", str(ROOT / "manifests" / "smallpayroll.yaml"),
                 "--state", str(tmp_path / "none.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amibake: error: ")
