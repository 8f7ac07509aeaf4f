"""The seed's checklist around the window: a fresh dump of the old database
kept as the rollback point before anything changes (`cutover.rollback_dump`),
and the record's TTL raised back once the watch period after the switch is
over (`amibake cutover finish`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from builder.atomic import fsync_dir, open_private
from builder.cutover import db_dump, dump_sql, pg
from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import DnsProvider, countdown, same_address
from builder.cutover.state import CutoverState, now_iso
from builder.errors import UserError
from builder.manifest.paths import unsafe_path_reason

#: how much of a plain dump's end is read for its completion comment
TAIL = 4096


def backup_old(cfg: CutoverConfig, state: CutoverState,
               checkpoint: Callable[[], None] = lambda: None) -> str:
    """`pg_dump -Fc` of the old database into cutover.rollback_dump (0600),
    proven readable by `pg_restore --list`, kept; once per cutover (its name
    is saved at once: a resume keeps it rather than dumping again). With
    `cutover.old_pg_dump: ssh:…` (PostgreSQL 8.1-9.1, which this machine's
    pg_dump cannot read) the old host's own `pg_dump -Fp`, kept here as
    plain SQL, non-empty and ending with pg_dump's completion comment."""
    f = state.facts
    if f.rollback_dump and Path(f.rollback_dump).is_file():
        return f"kept from before: {f.rollback_dump}"
    where = cfg.cutover.rollback_dump
    problem = unsafe_path_reason(where)
    if problem:  # checked at load; again here, as every path the cutover writes
        raise UserError(f"cutover.rollback_dump: {problem}")
    folder = Path(where)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    remote = cfg.cutover.old_pg_dump != "local"
    final = folder / f"{cfg.old.dbname}-{stamp}.{'sql' if remote else 'dump'}"
    partial = final.with_name(final.name + ".partial")
    fd = open_private(partial)  # production data: private from the first byte
    try:
        with os.fdopen(fd, "wb") as out:
            if remote:
                db_dump.old_host_dump_to(cfg, out)
                out.flush()
                os.fsync(out.fileno())
        proof = _plain_complete(cfg, partial) if remote else _archive_listing(cfg, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, final)
    fsync_dir(folder)
    f.rollback_dump = str(final)
    checkpoint()
    size = final.stat().st_size
    return f"{final}: {size / 2**20:.1f} MiB, {proof}; kept as the rollback point"


def _archive_listing(cfg: CutoverConfig, path: Path) -> str:
    """This machine's `pg_dump -Fc` into `path`, read back by pg_restore."""
    pg.tool(["pg_dump", "-Fc", "--no-publications", "--no-subscriptions",
             "-f", str(path)], cfg.old, timeout=24 * 3600)
    listing = pg.tool(["pg_restore", "--list", str(path)], cfg.old, timeout=3600)
    entries = sum(1 for ln in listing.splitlines() if ln and not ln.startswith(";"))
    return f"{entries} entries (pg_restore reads it)"


def _plain_complete(cfg: CutoverConfig, path: Path) -> str:
    """The old host's plain dump in `path`: not empty, and not cut short."""
    where = cfg.cutover.old_pg_dump.removeprefix("ssh:")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"the rollback dump from {where}'s pg_dump is empty",
                        hint="check pg_dump on the old host (cutover.old_pg_dump); "
                             "nothing was changed")
    with path.open("rb") as fh:
        fh.seek(max(0, size - TAIL))
        tail = fh.read()
    if not dump_sql.ends_complete(tail):
        raise UserError(f"the rollback dump from {where}'s pg_dump ends without "
                        f"{dump_sql.COMPLETE!r}: it was cut short",
                        hint="check the old host's disk and pg_dump; nothing was changed")
    return f"plain SQL from {where}'s own pg_dump, ends with its completion comment"


def ttl_due(cfg: CutoverConfig, state: CutoverState) -> datetime:
    f = state.facts
    if not f.dns_switched_at:
        raise UserError("the DNS record has not been switched yet",
                        hint="`amibake cutover run` first; `finish` ends the watch after it")
    return (datetime.fromisoformat(f.dns_switched_at)
            + timedelta(seconds=cfg.cutover.dns.raise_ttl_after))


def raise_ttl(cfg: CutoverConfig, state: CutoverState, dns: DnsProvider,
              now: datetime | None = None) -> str:
    """After the watch period: the record's TTL back to dns.final_ttl or the
    TTL it had before the cutover; refused earlier (the low TTL is what makes
    a rollback quick) and when the record no longer points at the new site."""
    spec, f = cfg.cutover.dns, state.facts
    if not state.complete:
        raise UserError(f"the cutover is not complete (next step {state.next_step})",
                        hint="`amibake cutover run` until it is, or `cutover rollback`")
    due = ttl_due(cfg, state)
    left = countdown(due, now or datetime.now(UTC))
    if left:
        raise UserError(f"still watching: the TTL is raised back at {due.isoformat()} "
                        f"({left} s from now; dns.raise_ttl_after {spec.raise_ttl_after} s)",
                        hint="run `amibake cutover finish` again then")
    target = spec.final_ttl or f.original_ttl or f.old_ttl
    if not target:
        raise UserError("the record's TTL before the cutover is unknown",
                        hint="set cutover.dns.final_ttl")
    rec = dns.get()
    if not same_address(rec.address, spec.new_address):
        raise UserError(f"{spec.record} points at {rec.address}, not the new site "
                        f"{spec.new_address}: not raising its TTL",
                        hint="was it rolled back or changed by hand?")
    if rec.ttl != target:
        dns.set(spec.new_address, target)
        dns.wait_authoritative(spec.new_address)
    f.ttl_raised_at = f.ttl_raised_at or now_iso()
    return f"{spec.record} {spec.new_address}: TTL {rec.ttl} s → {target} s"
