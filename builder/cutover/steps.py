"""The ordered cutover steps. Each is idempotent (a crashed run repeats the
step it was in) and says what it would do for --dry-run. Facts a later step
or a rollback needs are kept in the persisted state."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg

from builder.cutover import (
    backup_check,
    checklist,
    db_copy,
    db_dump,
    db_replicate,
    files,
    login,
    maintenance,
    migrate,
    preflight,
    smoke_form,
    verify,
)
from builder.cutover.config import Conn, CutoverConfig
from builder.cutover.db_roles import copy_roles, freeze, set_login, set_sequences
from builder.cutover.dns.base import (
    DnsProvider,
    cache_expiry,
    countdown,
    record_type,
    resolve_site,
)
from builder.cutover.plan import window
from builder.cutover.state import CutoverState, NotYet, now_iso
from builder.errors import UserError


@dataclass
class Counted:
    """Row counts taken in the background, and how long they took."""

    counts: dict[str, int]
    seconds: float


def _count(conn: Conn) -> Counted:
    start = time.monotonic()
    _counting_session(conn)
    counts = verify.row_counts(conn)
    return Counted(counts, time.monotonic() - start)


def _counting_session(conn: Conn) -> None:
    """This thread's session with `conn`, opened, without JIT (11+): the
    count's plan is an aggregate over an index-only scan, whose compiled
    expressions cost more than they save (PostgreSQL 15, 7 M rows: 160 ms
    without, 175-180 ms with)."""
    if verify.pg.version_num(conn) >= 110000:
        verify.pg.execute(conn, "SET jit = off")


@dataclass
class Ctx:
    cfg: CutoverConfig
    state: CutoverState
    dns: DnsProvider
    say: Callable[[str], None]
    start_now: bool = False
    fix_replica_identity: bool = False
    #: persist the state now: facts a rollback needs are saved before the
    #: change they describe is made, so a crash in between cannot lose them
    checkpoint: Callable[[], None] = lambda: None
    #: the new database as it was before the DNS switch (checksum_when: after_switch)
    snapshot: verify.Snapshot | None = None
    #: the old server's row counts, taken in the background from the freeze on
    old_counts: Future[Counted] | None = None
    #: the new server's, taken in the background from the catch-up on
    new_counts: Future[Counted] | None = None
    #: a session with the new server opened in the background from the
    #: catch-up on, for the snapshot the after-switch checksums read
    snapshot_session: Future[psycopg.Connection[Any]] | None = None
    #: dump_format copy: the rows each COPY sent from the old server and
    #: committed on the new one, per table (the row-count gate's figures)
    copied: db_copy.Copied | None = None
    _pool: ThreadPoolExecutor | None = None
    _workers: dict[Conn, ThreadPoolExecutor] = field(default_factory=dict)

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="cutover-bg")
        return self._pool

    def worker(self, conn: Conn) -> ThreadPoolExecutor:
        """A thread of its own for `conn`'s background work (its row count):
        its session is the thread's, opened ahead by `warm_up`."""
        if conn not in self._workers:
            self._workers[conn] = ThreadPoolExecutor(1, thread_name_prefix="cutover-count")
        return self._workers[conn]

    def warm_up(self) -> None:
        """Before the window: each server's counting session opened (a
        SCRAM login costs 5-15 ms of CPU on each side, which the window's
        counts then need), and the session the after-switch checksums'
        snapshot will use."""
        for conn in (self.cfg.old, self.cfg.new):
            self.worker(conn).submit(_counting_session, conn)
        if self.cfg.cutover.checksum_when == "after_switch" and self.snapshot_session is None:
            self.snapshot_session = self.pool().submit(verify.Snapshot.connect, self.cfg.new)

    def close(self) -> None:
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None
        session, self.snapshot_session = _opened(self.snapshot_session), None
        if session is not None:
            session.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for worker in self._workers.values():
            worker.submit(verify.pg.close_sessions)
            worker.shutdown(wait=True)
        self._workers.clear()


@dataclass(frozen=True)
class FnStep:
    name: str
    phase: str  # prepare | window | after | rollback
    describe_fn: Callable[[Ctx], str]
    run_fn: Callable[[Ctx], str]

    def describe(self, ctx: Ctx) -> str:
        return self.describe_fn(ctx)

    def run(self, ctx: Ctx) -> str:
        return self.run_fn(ctx)


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------ prepare


def _preflight(ctx: Ctx) -> str:
    checks = preflight.run_preflight(ctx.cfg, fix_replica_identity_now=ctx.fix_replica_identity)
    if all(c.ok for c in checks):  # the checks that write (and undo it), last
        repo = backup_check.repo_writable(ctx.cfg)
        if repo is not None:
            checks.append(repo)
    checks += preflight.site_address(ctx.dns)
    if all(c.ok for c in checks):
        checks.append(preflight.dns_update(ctx.dns))
    return preflight.require(checks)


def _lower_ttl(ctx: Ctx) -> str:
    facts, dns = ctx.state.facts, ctx.cfg.cutover.dns
    rec = ctx.dns.get()
    if facts.old_address is None:  # first run: remember what rollback restores
        ttl = rec.ttl
        if facts.original_ttl is not None and rec.ttl <= dns.low_ttl < facts.original_ttl:
            ttl = facts.original_ttl  # still lowered by an earlier, rolled-back run
        facts.old_address, facts.old_ttl = rec.address, ttl
        facts.original_ttl = ttl
        ctx.checkpoint()
    if rec.ttl > dns.low_ttl:
        facts.ttl_lowered_at = facts.ttl_lowered_at or now_iso()
        ctx.checkpoint()
        ctx.dns.set(rec.address, dns.low_ttl)
    ctx.dns.wait_authoritative(rec.address)
    return f"{dns.record} {rec.address}: TTL {facts.old_ttl} s → {dns.low_ttl} s"


def _await_window(ctx: Ctx) -> str:
    start, _ = window(ctx.cfg.cutover)
    now = _now()
    facts = ctx.state.facts
    notes = []
    if facts.ttl_lowered_at and facts.old_ttl:
        lowered = datetime.fromisoformat(facts.ttl_lowered_at)
        left = countdown(lowered + timedelta(seconds=facts.old_ttl), now)
        if left:
            notes.append(f"resolvers may cache the old TTL ({facts.old_ttl} s) for {left} s more")
    if now < start and not ctx.start_now:
        raise NotYet(f"the window opens at {start.isoformat()}; run again then (or --now)")
    if notes and not ctx.start_now:
        raise NotYet("; ".join(notes) + "; run again then (or --now)")
    return "window open" + (f" (started early: {'; '.join(notes)})" if notes else "")


def _vacuum(ctx: Ctx) -> str:
    detail = db_replicate.vacuum_both(ctx.cfg, timeout=ctx.cfg.cutover.catch_up_timeout)
    ctx.warm_up()
    return detail


# ------------------------------------------------------------------ window


def _maintenance_on(ctx: Ctx) -> str:
    ctx.state.facts.maintenance_on_at = ctx.state.facts.maintenance_on_at or now_iso()
    ctx.checkpoint()
    detail = maintenance.switch(ctx.cfg, True)
    status, headers, _ = verify.fetch(ctx.cfg.cutover.old_site, "/", ctx.cfg.server_name)
    if status != 503:
        raise UserError(f"the old site answers {status}, not 503, with the maintenance flag on",
                        hint="the old nginx needs the maintenance `if (-f flag)` block")
    return f"{detail}; old site answers 503 (Retry-After {headers.get('retry-after', '?')})"


def _freeze(ctx: Ctx) -> str:
    lsn, seqs = freeze(ctx.cfg)
    if ctx.cfg.strategy == "replicate":
        # the old server is frozen: count its rows for the gate while the
        # replica catches up (the count is the slow part of the gate on a big
        # database; with `dump` it would only compete with pg_dump)
        ctx.old_counts = ctx.worker(ctx.cfg.old).submit(_count, ctx.cfg.old)
    f = ctx.state.facts
    f.freeze_at = f.freeze_at or now_iso()
    f.final_lsn, f.sequences = lsn, seqs
    return f"{ctx.cfg.app_user} NOLOGIN, sessions ended; final LSN {lsn}"


def _catch_up(ctx: Ctx) -> str:
    lsn = ctx.state.facts.final_lsn
    assert lsn is not None
    detail = db_replicate.wait_caught_up(ctx.cfg, lsn, timeout=ctx.cfg.cutover.catch_up_timeout)
    views = db_replicate.refresh_materialized_views(ctx.cfg.new)
    if ctx.old_counts is not None:
        # the new server now holds everything committed before the freeze,
        # and the app cannot log in to it before the detach: count its rows
        # for the gate while the sequences are set and the subscription dropped
        ctx.new_counts = ctx.worker(ctx.cfg.new).submit(_count, ctx.cfg.new)
        if ctx.cfg.cutover.checksum_when == "after_switch" and ctx.snapshot_session is None:
            ctx.snapshot_session = ctx.pool().submit(verify.Snapshot.connect, ctx.cfg.new)
    return f"{detail}; {views} materialized view(s) refreshed"


def _sequences(ctx: Ctx) -> str:
    return f"{set_sequences(ctx.cfg.new, ctx.state.facts.sequences)} sequence(s) set"


def _writable(ctx: Ctx) -> None:
    set_login(ctx.cfg.new, ctx.cfg.app_user, True)
    ctx.state.facts.new_writable_at = ctx.state.facts.new_writable_at or now_iso()


def _detach(ctx: Ctx) -> str:
    # the new server alone, one round trip: the old server's slot,
    # publication and role are dropped after the DNS switch (cleanup_old)
    pending = db_replicate.drop_subscription_locally(
        ctx.cfg, then=f"ALTER ROLE {verify.pg.ident(ctx.cfg.app_user)} LOGIN;")
    ctx.state.facts.pending_old_cleanup = pending
    ctx.state.facts.new_writable_at = ctx.state.facts.new_writable_at or now_iso()
    return (f"subscription dropped, {ctx.cfg.app_user} LOGIN on the new server; left on the "
            f"old server until after the switch: {', '.join(pending)}")


def _dump_restore(ctx: Ctx) -> str:
    cut = ctx.cfg.cutover
    if cut.dump_format == "copy" and cut.old_pg_dump == "local":
        ctx.copied = db_copy.copy_database(ctx.cfg)
        detail = ctx.copied.summary()
    else:
        detail = db_dump.dump_restore(ctx.cfg)
    _writable(ctx)
    return detail


def _files_sync(ctx: Ctx) -> str:
    assert ctx.cfg.cutover.files is not None
    return files.sync(ctx.cfg.cutover.files)


def _verify_db(ctx: Ctx) -> str:
    cfg = ctx.cfg
    timing = ""
    # the new server's sequences, read while the counts run
    recorded = {f"{s}.{n}": v for s, n, v in ctx.state.facts.sequences}
    seqs = verify.compare("sequences", dict(recorded), dict(verify.sequences(cfg.new)))
    try:
        if ctx.copied is not None:
            old_counts, new_counts = ctx.copied.sent, ctx.copied.received
            ctx.copied = None
            timing = " (the rows each COPY sent from the old server's snapshot and committed "\
                     "on the new one into the table it emptied)"
        elif ctx.old_counts is not None:
            new = ctx.new_counts.result() if ctx.new_counts is not None else _count(cfg.new)
            new_counts = new.counts
            old = ctx.old_counts.result()
            old_counts = old.counts
            ctx.old_counts = ctx.new_counts = None
            timing = (f" (counted in the background: the old server in {old.seconds:.3f} s "
                      f"from the freeze, the new one in {new.seconds:.3f} s from the catch-up)")
        else:
            old_counts, new_counts = verify.both(verify.row_counts, cfg.old, cfg.new)
    except UserError as exc:
        ctx.old_counts = ctx.new_counts = None
        raise UserError(
            f"row counts: {exc}",
            hint="the old server must be up to compare; start it and run again") from exc
    counts = verify.compare("row counts", old_counts, new_counts)
    if cfg.cutover.checksum_when == "after_switch":
        session = ctx.snapshot_session
        ctx.snapshot_session = None
        ctx.close()
        ctx.snapshot = verify.Snapshot(cfg.new, session=_opened(session))
    for c in (counts, seqs):
        if not c.ok:
            raise UserError(
                f"gate failed: {c.summary()}",
                hint="DNS was not touched; `amibake cutover rollback` restores the old site")
    return f"{counts.summary()}; {seqs.summary()}{timing}"


def _opened(session: Future[psycopg.Connection[Any]] | None) -> psycopg.Connection[Any] | None:
    """The session opened ahead, if it opened (else the snapshot opens one)."""
    if session is None:
        return None
    try:
        return session.result()
    except psycopg.Error:
        return None


def _verify_checksums(ctx: Ctx) -> str:
    try:
        old, new = _checksums(ctx)
    except UserError as exc:
        raise UserError(
            f"table checksums: {exc}",
            hint="the old server must be up to compare; start it and run again") from exc
    c = verify.compare("table checksums", old, new)
    if not c.ok:
        raise UserError(f"gate failed: {c.summary()}",
                        hint="`amibake cutover rollback` restores the old site")
    return c.summary()


def _checksums(ctx: Ctx) -> tuple[dict[str, str], dict[str, str]]:
    if ctx.cfg.cutover.checksum_when == "after_switch":
        if ctx.snapshot is None:
            raise UserError(
                "the snapshot of the new database taken before the DNS switch was lost when "
                "the run stopped: its checksums would include the app's new writes",
                hint="compare by hand, or use checksum_when: before_switch")
        snap = ctx.snapshot
        with ThreadPoolExecutor(2) as pool:
            on_old = pool.submit(verify.table_checksums, ctx.cfg.old)
            new = verify.table_checksums(ctx.cfg.new, snap)
            old = on_old.result()
        ctx.close()
        return old, new
    return verify.both(verify.table_checksums, ctx.cfg.old, ctx.cfg.new)


def _verify_files(ctx: Ctx) -> str:
    assert ctx.cfg.cutover.files is not None
    spec = ctx.cfg.cutover.files
    check = files.verify(spec)
    repaired = ""
    if not check.ok:
        # rsync's quick check (size + mtime) misses a same-size, same-mtime
        # edit: copy what differs by checksum once, then verify again
        ctx.say(f"{len(check.differences)} file(s) differ by checksum; syncing with --checksum")
        files.sync(spec, checksum=True)
        repaired = f" ({len(check.differences)} repaired by a --checksum sync)"
        check = files.verify(spec)
    if not check.ok:
        raise UserError(f"gate failed: {len(check.differences)} file(s) differ: "
                        + "; ".join(check.differences[:5]),
                        hint="is something still writing there? `amibake cutover rollback` "
                             "restores the old site")
    return f"{check.files} file(s) equal by checksum{repaired}"


def smoke_new_site(cfg: CutoverConfig) -> str:
    """The GET smoke paths, then the scripted login/POST, against the new
    site under its real host name (no DNS involved)."""
    cut = cfg.cutover
    host = urlsplit(cut.new_site).hostname or cfg.server_name
    address = resolve_site(cut.dns)  # a load balancer's name: one of its addresses
    shown = cut.dns.new_address + ("" if address == cut.dns.new_address else f" ({address})")
    results = verify.smoke(cut.new_site, host, cut.smoke_paths, address=address)
    detail = verify.require_smoke(results, f"{cut.new_site} at {shown}", host)
    if address != cut.dns.new_address:
        detail += f" at {shown}"
    if cut.form_smoke is not None:
        detail += "; " + smoke_form.run_form(cfg, cut.form_smoke, cfg.form_secrets,
                                             address=address)
    return detail


def _smoke(ctx: Ctx) -> str:
    return smoke_new_site(ctx.cfg)


def _dns_switch(ctx: Ctx) -> str:
    dns = ctx.cfg.cutover.dns
    ctx.dns.set(dns.new_address, dns.low_ttl)
    answers = ctx.dns.wait_authoritative(dns.new_address)
    f = ctx.state.facts
    f.dns_switched_at = f.dns_switched_at or now_iso()
    f.dns_switched_ttl = dns.low_ttl
    left = countdown(expiry(ctx.state), _now())
    return (f"{dns.record} → {dns.new_address} on {len(answers)} authoritative server(s); "
            f"resolvers may cache the old address for {left} s more")


def _backup_after_switch(ctx: Ctx) -> str:
    switched = ctx.state.facts.dns_switched_at
    assert switched is not None
    return backup_check.after_switch(ctx.cfg, datetime.fromisoformat(switched))


def _cleanup_old(ctx: Ctx) -> str:
    f = ctx.state.facts
    if ctx.cfg.strategy != "replicate":
        return "nothing left on the old server"
    if not verify.pg.reachable(ctx.cfg.old):
        return ("old server unreachable; still to drop there: " + ", ".join(f.pending_old_cleanup)
                + " (run again when it is up)") if f.pending_old_cleanup else "nothing to drop"
    f.pending_old_cleanup = db_replicate.cleanup_old(ctx.cfg)
    if f.pending_old_cleanup:
        return ("publication and role dropped on the old server; still in use there: "
                + ", ".join(f.pending_old_cleanup) + " (run again to drop it)")
    return "slot, publication and replication role dropped on the old server"


def expiry(state: CutoverState) -> datetime:
    f = state.facts
    assert f.dns_switched_at is not None
    return cache_expiry(
        datetime.fromisoformat(f.dns_switched_at), f.dns_switched_ttl or 0,
        datetime.fromisoformat(f.ttl_lowered_at) if f.ttl_lowered_at else None, f.old_ttl)


# ------------------------------------------------------------------ lists


def forward_steps(cfg: CutoverConfig) -> list[FnStep]:
    cut = cfg.cutover
    d = cut.dns
    rep = cut.strategy == "replicate"
    fs = cut.files
    pg = cfg.manifest.components.postgresql
    backed_up = pg is not None and pg.backup is not None
    steps = [
        FnStep("preflight", "prepare",
               lambda c: "connectivity, privileges, wal_level, replica identity, free space, "
               "files source, "
               + ("the backup repository writable, " if backed_up else "")
               + "a no-op DNS update"
               + (" (fixing replica identity)" if c.fix_replica_identity else ""), _preflight),
    ]
    if cut.rollback_dump:
        steps.append(FnStep(
            "backup_old", "prepare",
            lambda c: (f"pg_dump -Fc of the old database into {cut.rollback_dump}, checked "
                       "with pg_restore --list" if cut.old_pg_dump == "local" else
                       f"the old host's own pg_dump -Fp ({cut.old_pg_dump}) into "
                       f"{cut.rollback_dump}, checked for pg_dump's completion comment")
                      + ", kept as the rollback point",
            lambda c: checklist.backup_old(c.cfg, c.state, c.checkpoint)))
    steps += [
        FnStep("dns_lower_ttl", "prepare",
               lambda c: f"read {d.record} and lower its TTL to {d.low_ttl} s", _lower_ttl),
        FnStep("db_copy_roles", "prepare",
               lambda c: "pg_dumpall --roles-only from the old server onto the new one",
               lambda c: copy_roles(c.cfg)),
    ]
    if rep:
        steps.append(FnStep(
            "db_replication_setup", "prepare",
            lambda c: f"schema copy, publication and subscription {db_replicate.NAME}, "
                      "initial sync", lambda c: db_replicate.setup(c.cfg, c.say)))
    if fs:
        steps.append(FnStep("files_presync", "prepare",
                            lambda c: f"rsync --delete {fs.source} → {fs.destination}",
                            _files_sync))
    steps += [
        FnStep("await_window", "prepare",
               lambda c: f"wait for the window ({cut.window_start}) and the old TTL to expire",
               _await_window),
    ]
    if rep:
        steps.append(FnStep(
            "db_vacuum", "prepare",
            lambda c: "VACUUM on both servers, so that the window's row counts read the "
                      "indexes alone; wait until the subscriber has applied the WAL written "
                      "meanwhile",
            _vacuum))
    steps += [
        FnStep("maintenance_on", "window",
               lambda c: f"maintenance page and flag {c.cfg.nginx.maintenance_flag} on "
                         f"{cut.old_web}; expect 503 from {cut.old_site}", _maintenance_on),
        FnStep("db_freeze", "window",
               lambda c: f"ALTER ROLE {c.cfg.app_user} NOLOGIN on the old server, end its "
                         "sessions, record the final LSN and sequences", _freeze),
    ]
    if rep:
        steps += [
            FnStep("db_catch_up", "window",
                   lambda c: "wait until the slot confirms the final LSN; refresh the "
                             "materialized views on the new server", _catch_up),
            FnStep("db_sequences", "window",
                   lambda c: "setval every sequence on the new server", _sequences),
            FnStep("db_detach", "window",
                   lambda c: "drop the subscription on the new server (the old server's slot "
                             "and publication after the switch); app role LOGIN on new",
                   _detach),
        ]
    else:
        steps.append(FnStep(
            "db_dump_restore", "window",
            lambda c: (f"the old host's own pg_dump ({cut.old_pg_dump}) | psql, one transaction"
                       if cut.old_pg_dump != "local" else
                       f"pg_dump -Fd -Z 0 -j {cut.dump_jobs} + pg_restore -j {cut.dump_jobs}"
                       " --clean" if cut.dump_format == "directory" else
                       f"the schema by pg_dump, each table by COPY | COPY (FREEZE) "
                       f"({cut.dump_jobs} at once), indexes and constraints by pg_restore "
                       f"-j {cut.dump_jobs}" if cut.dump_format == "copy" else
                       "pg_dump -Fc | pg_restore --clean") + " onto the new server",
            _dump_restore))
    if fs:
        steps.append(FnStep("files_final_sync", "window",
                            lambda c: f"rsync --delete {fs.source} → {fs.destination}",
                            _files_sync))
    steps.append(FnStep("verify_db", "window",
                        lambda c: "gate: per-table row counts and sequence values equal",
                        _verify_db))
    checksums = FnStep("verify_checksums", "window" if cut.checksum_when == "before_switch"
                       else "after", lambda c: "gate: per-table ordered md5 checksums equal",
                       _verify_checksums)
    if cut.checksum_when == "before_switch":
        steps.append(checksums)
    if fs:
        steps.append(FnStep("verify_files", "window",
                            lambda c: "gate: rsync --checksum --dry-run finds no difference",
                            _verify_files))
    if cut.new_app:  # after the content gates (they compare with the old schema)
        steps.append(FnStep("app_migrate", "window",
                            lambda c: f"run `{cut.migrate_command}` on {cut.new_app}",
                            lambda c: migrate.run_migrations(c.cfg)))
    steps += [
        FnStep("smoke_new_site", "window",
               lambda c: f"GET {', '.join(cut.smoke_paths)} from {cut.new_site} resolved to "
                         + (f"an address of {d.new_address} (the site's record untouched)"
                            if record_type(d.new_address) == "CNAME" else
                            f"{d.new_address} (no DNS involved)"), _smoke),
        FnStep("dns_switch", "window",
               lambda c: f"{d.record} → {d.new_address} ({record_type(d.new_address)} "
                         f"record, TTL {d.low_ttl} s), verified on every authoritative "
                         "server", _dns_switch),
    ]
    if cut.checksum_when == "after_switch":
        steps.append(checksums)
    if backed_up:
        steps.append(FnStep(
            "backup_after_switch", "after",
            lambda c: "a full pgBackRest backup of the new server taken after the switch"
                      + (f" (`{cut.backup_command}` on {cut.new_db_host} unless one is there)"
                         if cut.new_db_host else " must be in the repository"),
            _backup_after_switch))
    steps.append(FnStep("cleanup_old", "after",
                        lambda c: "drop anything left on the old server", _cleanup_old))
    if cut.receive is not None:  # the db role's cutover login, last: it is what we connect as
        steps.append(FnStep("retire_cutover_login", "after",
                            lambda c: f"{cfg.new.user} NOLOGIN on the new server",
                            lambda c: login.retire(c.cfg)))
    return steps


# ------------------------------------------------------------------ rollback


def _rb_dns(ctx: Ctx) -> str:
    f = ctx.state.facts
    if f.old_address is None or f.old_ttl is None:
        return "DNS untouched"
    ctx.dns.set(f.old_address, f.old_ttl)
    ctx.dns.wait_authoritative(f.old_address)
    return f"{ctx.cfg.cutover.dns.record} → {f.old_address}, TTL {f.old_ttl} s"


def _rb_replication(ctx: Ctx) -> str:
    if ctx.cfg.strategy != "replicate":
        return "no replication to undo"
    pending = db_replicate.detach(ctx.cfg)
    ctx.state.facts.pending_old_cleanup = pending
    return "replication removed" + (f"; left on the old server: {pending}" if pending else "")


def _rb_unfreeze(ctx: Ctx) -> str:
    set_login(ctx.cfg.old, ctx.cfg.app_user, True)
    return f"{ctx.cfg.app_user} LOGIN again on the old server"


def _rb_old_serves(ctx: Ctx) -> str:
    cut = ctx.cfg.cutover
    results = verify.smoke(cut.old_site, ctx.cfg.server_name, cut.smoke_paths)
    return verify.require_smoke(results, cut.old_site, ctx.cfg.server_name)


def rollback_steps(cfg: CutoverConfig) -> list[FnStep]:
    """The old site comes back first (writes, page off, checked), then DNS and
    replication are undone: the rollback runs every step even when one fails
    (procedure.rollback_cutover) and names what could not be undone."""
    return [
        FnStep("db_unfreeze_old", "rollback",
               lambda c: f"ALTER ROLE {cfg.app_user} LOGIN on the old server", _rb_unfreeze),
        FnStep("maintenance_off", "rollback", lambda c: "remove the maintenance flag",
               lambda c: maintenance.switch(c.cfg, False)),
        FnStep("old_site_serving", "rollback",
               lambda c: f"GET {', '.join(cfg.cutover.smoke_paths)} from {cfg.cutover.old_site}",
               _rb_old_serves),
        FnStep("dns_restore", "rollback", lambda c: "restore the record's old address and TTL",
               _rb_dns),
        FnStep("db_replication_remove", "rollback",
               lambda c: "drop subscription, publication and slot", _rb_replication),
    ]
