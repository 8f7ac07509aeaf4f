"""The runbook: timeline, notice wording (never 12:00 am/pm, midnight or noon),
timezones, and pre-flight results listed with their current state."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from builder.cutover import plan
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import plan_doc
from builder.manifest import load_manifest
from builder.manifest.model import Cutover
from builder.proc import run
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import Cluster, Knot, Site, cutover_manifest

ROOT = Path(__file__).resolve().parent.parent
NY = ZoneInfo("America/New_York")
AMBIGUOUS = re.compile(r"12:00\s*[ap]m|midnight|noon", re.IGNORECASE)


def _cut(window_start: str, minutes: int = 30, tz: str = "America/New_York") -> Cutover:
    m = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    assert m.cutover is not None
    return replace(m.cutover, window_start=window_start, window_minutes=minutes, timezone=tz)


def test_midnight_start_is_announced_as_1159_pm_the_day_before() -> None:
    text = plan.notice_text("smallpayroll", _cut("2026-12-06T00:00:00-05:00", 60))
    assert "Saturday, December 5, 2026, 11:59 pm EST (UTC-05:00)" in text
    assert "Sunday, December 6, 2026, 1:00 am EST" in text
    assert not AMBIGUOUS.search(text)


def test_midnight_end_is_announced_as_1201_am() -> None:
    text = plan.notice_text("smallpayroll", _cut("2026-12-05T23:00:00-05:00", 60))
    assert "from Saturday, December 5, 2026, 11:00 pm EST" in text
    assert "until Sunday, December 6, 2026, 12:01 am EST (UTC-05:00)" in text
    assert not AMBIGUOUS.search(text)


def test_noon_is_never_written() -> None:
    text = plan.notice_text("smallpayroll", _cut("2026-07-04T12:00:00-04:00", 120))
    assert "11:59 am EDT (UTC-04:00)" in text  # summer time shown as such
    assert "2:00 pm EDT" in text
    end_noon = plan.notice_text("smallpayroll", _cut("2026-07-04T11:00:00-04:00", 60))
    assert "12:01 pm EDT" in end_noon
    for t in (text, end_noon):
        assert not AMBIGUOUS.search(t)


def test_window_is_shown_in_the_notice_timezone() -> None:
    # written in UTC, announced in Berlin time
    text = plan.notice_text("smallpayroll", _cut("2026-12-05T22:30:00+00:00", 30, "Europe/Berlin"))
    assert "Saturday, December 5, 2026, 11:30 pm CET (UTC+01:00)" in text
    assert "12:01 am CET" in text  # the end, 00:00 Berlin, shifted out


def test_clock_refuses_ambiguous_times() -> None:
    with pytest.raises(ValueError):
        plan.clock(datetime(2026, 1, 1, 0, 0, tzinfo=NY))
    assert plan.clock(datetime(2026, 1, 1, 0, 1, tzinfo=NY)) == "12:01 am"
    assert plan.clock(datetime(2026, 1, 1, 23, 59, tzinfo=NY)) == "11:59 pm"


def test_notice_says_data_is_safe_and_whom_to_contact() -> None:
    text = plan.notice_text("smallpayroll", _cut("2026-12-05T23:59:00-05:00"))
    assert "safe" in text and "nothing will be lost" in text
    assert "Pat Doe, support@example.com, +1 555 0100" in text


def test_timeline_from_the_window_and_the_current_ttl() -> None:
    cut = _cut("2026-12-05T23:59:00-05:00")
    entries = plan.timeline(cut, old_ttl=2 * 86400)
    at = {e.title.split(":")[0]: e.at for e in entries}
    start = datetime(2026, 12, 5, 23, 59, tzinfo=NY)
    assert at["send the user notice"] == datetime(2026, 11, 21, 23, 59, tzinfo=NY)
    # the TTL is lowered at least one old TTL (here two days) before the window
    assert (start - at["prepare"]).total_seconds() == 2 * 86400
    assert plan.timeline(cut, old_ttl=300)[1].at == datetime(2026, 12, 4, 23, 59, tzinfo=NY)
    for e in entries:
        assert not AMBIGUOUS.search(e.to_json()["announced"])


def test_naive_window_start_is_refused() -> None:
    from builder.errors import UserError

    with pytest.raises(UserError, match="no timezone"):
        plan.window(_cut("2026-12-05T23:59:00"))


def test_plan_lists_preflight_results_and_current_ttl(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    old, new = pg_pair
    old.sql("CREATE TABLE nopk (a int)")
    cfg = derive(cutover_manifest(old, new, knot, sites))
    doc = plan_doc(cfg, provider_for(cfg))
    assert doc["dns"]["current_ttl"] == 300 and doc["dns"]["current_address"] == "127.0.0.1"
    checks = {c["check"]: c for c in doc["preflight"]}
    assert checks["old: wal_level = logical"]["ok"]
    assert not checks["tables have a replica identity"]["ok"]
    assert "public.nopk" in checks["tables have a replica identity"]["detail"]
    md = plan.to_markdown(doc)
    assert "- [ ] tables have a replica identity" in md and "## User notice" in md
    assert [s["name"] for s in doc["steps"]][:2] == ["preflight", "dns_lower_ttl"]
    assert not AMBIGUOUS.search(md)
    # plan changes nothing
    assert not old.sql("SELECT 1 FROM pg_publication")
    assert knot.query("payroll.example.com.")[1] == 300


def test_window_start_with_seconds_is_announced_by_the_minute(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], secret_env: None,
) -> None:
    """A start of 00:00:30 is still the midnight minute: 11:59 pm the day
    before; an end with seconds is announced at the next minute."""
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites,
                                  window_start="2026-12-06T00:00:30-05:00", window_minutes=30))
    md = plan.to_markdown(plan_doc(cfg, provider_for(cfg)))
    assert ("Window: Saturday, December 5, 2026, 11:59 pm EST (UTC-05:00) – "
            "Sunday, December 6, 2026, 12:31 am EST (UTC-05:00)") in md
    assert not AMBIGUOUS.search(md)
    text = plan.notice_text("smallpayroll", _cut("2026-12-05T23:00:45-05:00", 60))
    assert "from Saturday, December 5, 2026, 11:00 pm EST" in text
    assert "until Sunday, December 6, 2026, 12:01 am EST" in text  # 00:00:45, shifted out
    assert not AMBIGUOUS.search(text)


def test_the_runbook_gives_a_timer_line_that_runs_notify_at_the_notice_time(
    tmp_path: Path,
) -> None:
    """`cutover plan` prints a systemd-run line for the notice: its calendar
    read by systemd's own parser is the notice time in UTC, and its command
    is this amibake's `cutover notify` on the manifest by absolute path."""
    folder = tmp_path / "my manifests"
    folder.mkdir()
    manifest = folder / "payroll's.yaml"
    shutil.copy(ROOT / "manifests" / "smallpayroll.yaml", manifest)
    cut = _cut("2026-12-05T23:59:00-05:00")  # lead_days 14: 2026-11-21 23:59 EST
    doc = plan.build("smallpayroll", cut, old_ttl=300, old_address=None, checks=[], steps=[],
                     manifest=manifest)
    line = doc["notice"]["schedule"]
    assert f"```\n{line}\n```" in plan.to_markdown(doc)
    argv = shlex.split(line)
    assert argv[0] == "systemd-run" and argv[1].startswith("--on-calendar=")
    calendar = run(["systemd-analyze", "calendar", argv[1].removeprefix("--on-calendar=")],
                   capture=True).stdout
    assert "Normalized form: 2026-11-22 04:59:00 UTC" in calendar
    assert argv[-3:] == ["cutover", "notify", str(manifest)]
    helped = run([*argv[argv.index("--timer-property=AccuracySec=1s") + 1:-1], "--help"],
                 capture=True).stdout
    assert "notify" in helped and "banner-on" in helped
    no_file = plan.build("smallpayroll", cut, old_ttl=300, old_address=None, checks=[],
                         steps=[])
    assert no_file["notice"]["schedule"] is None
    assert "systemd-run" not in plan.to_markdown(no_file)
