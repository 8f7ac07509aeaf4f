"""The runbook: a timeline computed from the window, the user notice, the
pre-flight results and the steps, as JSON and as Markdown.

Times shown to people are never 12:00 am/pm, "midnight" or "noon" (nobody
agrees which day midnight belongs to): a start on the hour of midnight or
noon is announced one minute earlier (11:59 pm / 11:59 am), an end one
minute later (12:01 am / 12:01 pm). Every time carries its timezone.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from builder.errors import UserError
from builder.manifest.field_checks import is_host_name
from builder.manifest.model import Cutover

Edge = Literal["start", "end"]
DAY = 86400
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def zone(cut: Cutover) -> ZoneInfo:
    try:
        return ZoneInfo(cut.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UserError(f"cutover.timezone: unknown timezone {cut.timezone!r}",
                        hint="an IANA name such as America/New_York") from exc


def window(cut: Cutover) -> tuple[datetime, datetime]:
    """The real window, in the notice's timezone."""
    try:
        start = datetime.fromisoformat(cut.window_start)
    except ValueError as exc:
        raise UserError(f"cutover.window_start: not ISO 8601: {cut.window_start!r}",
                        hint="e.g. 2026-12-05T23:59-05:00") from exc
    if start.tzinfo is None:
        raise UserError("cutover.window_start has no timezone offset",
                        hint="write it with one, e.g. 2026-12-05T23:59-05:00")
    start = start.astimezone(zone(cut))
    return start, start + timedelta(minutes=cut.window_minutes)


def shift(dt: datetime, edge: Edge) -> datetime:
    """To the whole minute people are told, outward from the window (a start
    with seconds is announced at its minute, an end at the next one), then off
    the ambiguous midnight/noon minute, outward too."""
    whole = dt.replace(second=0, microsecond=0)
    if edge == "end" and whole != dt:
        whole += timedelta(minutes=1)
    if whole.minute == 0 and whole.hour in (0, 12):
        return whole - timedelta(minutes=1) if edge == "start" else whole + timedelta(minutes=1)
    return whole


def announced_window(cut: Cutover) -> tuple[datetime, datetime]:
    start, end = window(cut)
    return shift(start, "start"), shift(end, "end")


def clock(dt: datetime) -> str:
    """`11:59 pm` — refuses the ambiguous 12:00 (shift() first)."""
    if dt.minute == 0 and dt.hour in (0, 12):
        raise ValueError("12:00 am/pm is ambiguous; shift() the time first")
    hour = dt.hour % 12 or 12
    return f"{hour}:{dt.minute:02d} {'am' if dt.hour < 12 else 'pm'}"


def format_time(dt: datetime, edge: Edge = "start") -> str:
    """`Saturday, December 5, 2026, 11:59 pm EST (UTC-05:00)`."""
    dt = shift(dt, edge)
    off = dt.strftime("%z")
    offset = f"UTC{off[:3]}:{off[3:]}" if off else "UTC"
    return (f"{_DAYS[dt.weekday()]}, {_MONTHS[dt.month - 1]} {dt.day}, {dt.year}, "
            f"{clock(dt)} {dt.tzname()} ({offset})")


def notice_at(cut: Cutover) -> datetime:
    """When the notice goes out: `notice.lead_days` before the window."""
    return window(cut)[0] - timedelta(days=cut.notice.lead_days)


def notice_schedule(cut: Cutover, manifest: Path) -> str:
    """A shell line that schedules `amibake cutover notify MANIFEST` at the
    notice time with a transient systemd timer (root's environment: its AWS
    configuration; this Python and the manifest by absolute path)."""
    at = notice_at(cut).astimezone(UTC)
    return shlex.join(["systemd-run", f"--on-calendar={at:%Y-%m-%d %H:%M:%S} UTC",
                       "--timer-property=AccuracySec=1s", sys.executable, "-m", "builder",
                       "cutover", "notify", str(manifest.resolve())])


def notice_text(app_name: str, cut: Cutover) -> str:
    start, end = window(cut)
    return (
        f"{app_name} is moving to new servers. The site will be unavailable from "
        f"{format_time(start, 'start')} until {format_time(end, 'end')}.\n\n"
        "Everything you have entered is safe: it moves with the site, and nothing will be "
        "lost. During the maintenance the site shows a notice and cannot save changes; "
        "please finish your work before it starts.\n\n"
        f"Questions: {cut.notice.contact}"
    )


@dataclass(frozen=True)
class Entry:
    at: datetime
    edge: Edge
    title: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "announced": format_time(self.at, self.edge),
                "title": self.title, "detail": self.detail}


def timeline(cut: Cutover, old_ttl: int | None) -> list[Entry]:
    start, end = window(cut)
    ttl = old_ttl if old_ttl is not None else DAY
    lead = max(ttl, DAY)  # at least one old TTL ahead; a day, as the seed does
    switch = start + timedelta(minutes=5)
    strategy = ("copy roles and schema, create the publication and subscription and let the "
                "initial sync finish" if cut.strategy == "replicate" else "copy roles")
    return [
        Entry(notice_at(cut), "start", "send the user notice",
              f"`amibake cutover notify`, {cut.notice.lead_days} days ahead; text below"
              + "".join(part for part, on in (
                  ("; mailed to notice.mail's recipients", cut.notice.mail is not None),
                  ("; shown as a banner on the old site's pages until the maintenance page "
                   "goes up", cut.notice.banner)) if on)),
        Entry(start - timedelta(seconds=lead), "start", "prepare: `amibake cutover run`",
              f"pre-flight checks; lower the TTL of {cut.dns.record} from "
              + (f"its current {ttl} s" if old_ttl is not None else
                 "an unknown TTL (assumed 1 day)") +
              f" to {cut.dns.low_ttl} s (at least one old TTL before the window); {strategy}; "
              "pre-sync the files. The run stops at `await_window`."),
        Entry(start, "start", "window opens: `amibake cutover run` again",
              "maintenance page on (503 + Retry-After), writes frozen, "
              + ("replica catches up, sequences copied, subscription dropped"
                 if cut.strategy == "replicate" else "dump and restore")
              + ", final file sync, verification gates, smoke tests as "
              "the real host name"),
        Entry(switch, "start", "DNS switch (expected)",
              f"{cut.dns.record} → {cut.dns.new_address}, TTL {cut.dns.low_ttl} s"
              + (" (its A record replaced by a CNAME to that name, in one update)"
                 if is_host_name(cut.dns.new_address) else "")
              + "; verified on every authoritative server"),
        Entry(switch + timedelta(seconds=cut.dns.low_ttl), "end", "watch",
              "resolvers may return the old address until about here (`amibake cutover status` "
              "counts down); the old site keeps answering 503, so nothing is written there"),
        Entry(end, "end", "window closes",
              "if any gate failed: `amibake cutover rollback` (DNS and TTL restored, writes "
              "re-enabled on the old server, maintenance page off)"),
    ]


def by_hand(cut: Cutover, old_address: str | None, old_ttl: int | None) -> dict[str, str]:
    """The switch and its rollback as `nsupdate` input (RFC 2136 only), for when amibake
    cannot run: `nsupdate -y <tsig key>` reads it."""
    if cut.dns.provider != "rfc2136" or not cut.dns.server:
        return {}
    from builder.cutover.dns.rfc2136 import nsupdate_script

    out = {"switch": nsupdate_script(cut.dns, cut.dns.new_address, cut.dns.low_ttl)}
    if old_address is not None and old_ttl is not None:
        out["rollback"] = nsupdate_script(cut.dns, old_address, old_ttl)
    return out


def build(app_name: str, cut: Cutover, *, old_ttl: int | None, old_address: str | None,
          checks: Sequence[Any], steps: Sequence[tuple[str, str, str]],
          rehearsal: dict[str, Any] | None = None,
          manifest: Path | None = None) -> dict[str, Any]:
    start, end = window(cut)
    return {
        "strategy": cut.strategy,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "timezone": cut.timezone,
                   "announced_start": format_time(start, "start"),
                   "announced_end": format_time(end, "end")},
        "dns": {"record": cut.dns.record, "current_address": old_address,
                "current_ttl": old_ttl, "new_address": cut.dns.new_address,
                "new_type": "CNAME" if is_host_name(cut.dns.new_address) else "A",
                "low_ttl": cut.dns.low_ttl, "by_hand": by_hand(cut, old_address, old_ttl)},
        "notice": {"send_at": notice_at(cut).isoformat(),
                   "schedule": notice_schedule(cut, manifest) if manifest else None,
                   "text": notice_text(app_name, cut)},
        "timeline": [e.to_json() for e in timeline(cut, old_ttl)],
        "preflight": [{"check": c.name, "ok": c.ok, "detail": c.detail, "hint": c.hint}
                      for c in checks],
        "steps": [{"name": n, "phase": p, "does": d} for n, p, d in steps],
        "rollback": ["re-enable the app role's LOGIN on the old server",
                     "maintenance page off; check the old site answers",
                     "restore the DNS record's old address and TTL"
                     + (" (the CNAME replaced by the old A record)"
                        if is_host_name(cut.dns.new_address) else ""),
                     "drop the publication and slot on the old server",
                     "every step runs even if one fails; what could not be undone is named "
                     "(run rollback again to retry it)"],
        "rehearsal": rehearsal,
    }


def to_markdown(doc: dict[str, Any]) -> str:
    w = doc["window"]
    lines = [f"# Cutover runbook ({doc['strategy']})", "",
             f"Window: {w['announced_start']} – {w['announced_end']}", "", "## Timeline", "",
             "| when | what | details |", "| --- | --- | --- |"]
    lines += [f"| {e['announced']} | {e['title']} | {e['detail']} |" for e in doc["timeline"]]
    lines += ["", "## User notice", "", f"Send at: {doc['notice']['send_at']}", ""]
    if doc["notice"].get("schedule"):
        lines += ["`amibake cutover notify` then (banner on the old site, mail); to have it "
                  "run then by a transient systemd timer, run this now as root:", "",
                  "```", doc["notice"]["schedule"], "```", ""]
    lines += ["> " + ln if ln else ">" for ln in doc["notice"]["text"].splitlines()]
    lines += ["", "## Pre-flight checks", ""]
    lines += [f"- [{'x' if c['ok'] else ' '}] {c['check']}: {c['detail']}"
              + ("" if c["ok"] or not c["hint"] else f" — {c['hint']}") for c in doc["preflight"]]
    lines += ["", "## Steps", ""]
    lines += [f"{i}. `{s['name']}` ({s['phase']}): {s['does']}"
              for i, s in enumerate(doc["steps"], 1)]
    lines += ["", "## Rollback (`amibake cutover rollback`)", ""]
    lines += [f"- {r}" for r in doc["rollback"]]
    hand = doc["dns"].get("by_hand") or {}
    if hand:
        lines += ["", "## DNS by hand (`nsupdate -y KEY`), only if amibake cannot run", ""]
        for what, script in hand.items():
            lines += [f"{what}:", "", "```", *script.splitlines(), "```", ""]
        lines.pop()
    lines += ["", "## Last rehearsal (`amibake cutover rehearse`)", ""]
    if doc.get("rehearsal"):
        lines += rehearsal_lines(doc["rehearsal"])
    else:
        lines += ["None yet: rehearse before announcing the window, so its length is measured."]
    return "\n".join(lines) + "\n"


def rehearsal_lines(doc: dict[str, Any]) -> list[str]:
    """The figures as people read them (the CLI and the runbook)."""
    lines = [f"| {r['step']} | {r['phase']} | {r['seconds']:.2f} s |" for r in doc["steps"]]
    fits = "fits" if doc["fits_window"] else "does NOT fit"
    return [f"Rehearsed {doc['rehearsed_at']} ({doc['strategy']}).", "",
            "| step | phase | time |", "| --- | --- | --- |", *lines, "",
            f"Measured window work: {doc['window_measured_s']:.2f} s — {fits} the announced "
            f"{doc['window_minutes']} minutes.",
            "Not measured: " + "; ".join(f"{k} ({v})" for k, v in doc["not_measured"].items()),
            f"Reset: {doc['reset']}"]
