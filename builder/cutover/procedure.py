"""The cutover's four operations — plan, run, status, rollback — over the
persisted state. The CLI verb and the tests call these."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.cutover import checklist, pg, plan, preflight, rehearse
from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import DnsProvider, countdown
from builder.cutover.state import AfterStep, CutoverState, StepRecord, now_iso, run_steps
from builder.cutover.steps import Ctx, expiry, forward_steps, rollback_steps
from builder.errors import UserError

Say = Callable[[str], None]


def default_state_path(cfg: CutoverConfig) -> Path:
    src = cfg.manifest.source
    return src.parent / ".amibake" / f"cutover-{cfg.manifest.name}.json"


def load_state(cfg: CutoverConfig, path: Path, *, create: bool) -> CutoverState:
    names = [s.name for s in forward_steps(cfg)]
    if path.exists():
        state = CutoverState.load(path)
        if state.strategy != cfg.strategy:
            raise UserError(
                f"{path}: this cutover was started with strategy {state.strategy}, "
                f"the manifest now says {cfg.strategy}",
                hint="roll it back first, or use a new --state file")
        state.align(names)
        return state
    if not create:
        raise UserError(f"no cutover state at {path}", hint="`amibake cutover run` starts one")
    return CutoverState.new(str(cfg.manifest.source), cfg.strategy, names)


def plan_doc(cfg: CutoverConfig, dns: DnsProvider, path: Path | None = None) -> dict[str, Any]:
    """The runbook; `path` is the state file, beside which the last rehearsal's
    figures are found."""
    try:
        rec = dns.get()
        old_ttl: int | None = rec.ttl
        old_address: str | None = rec.address
    except UserError:
        old_ttl = old_address = None
    try:
        checks = preflight.run_preflight(cfg)
    except UserError as exc:
        checks = [preflight.Check("pre-flight", False, str(exc), exc.hint)]
    checks += preflight.site_address(dns)
    ctx = Ctx(cfg, CutoverState.new("", cfg.strategy, []), dns, lambda s: None)
    steps = [(s.name, s.phase, s.describe(ctx)) for s in forward_steps(cfg)]
    figures = rehearse.load_figures(rehearse.figures_path(path or default_state_path(cfg)))
    return plan.build(cfg.manifest.app.name, cfg.cutover, old_ttl=old_ttl,
                      old_address=old_address, checks=checks, steps=steps, rehearsal=figures,
                      manifest=cfg.manifest.source if cfg.manifest.source.is_file() else None)


def dry_run(cfg: CutoverConfig, dns: DnsProvider, path: Path, *, rollback: bool = False,
            start_now: bool = False, fix_replica_identity: bool = False) -> list[dict[str, str]]:
    state = load_state(cfg, path, create=True)
    ctx = Ctx(cfg, state, dns, lambda s: None, start_now, fix_replica_identity)
    steps = rollback_steps(cfg) if rollback else forward_steps(cfg)
    status = {r.name: r.status for r in (state.rollback if rollback else state.steps)}
    return [{"step": s.name, "phase": s.phase, "status": status.get(s.name, "pending"),
             "would": s.describe(ctx)} for s in steps]


def run_cutover(cfg: CutoverConfig, dns: DnsProvider, path: Path, *, say: Say,
                start_now: bool = False, fix_replica_identity: bool = False,
                after_step: AfterStep | None = None) -> CutoverState:
    state = load_state(cfg, path, create=True)
    if state.complete and state.facts.pending_old_cleanup:
        state.step("cleanup_old").status = "pending"  # retry what the old server still holds
    ctx = Ctx(cfg, state, dns, say, start_now, fix_replica_identity,
              checkpoint=lambda: state.save(path))
    try:
        run_steps(forward_steps(cfg), state.steps, ctx, state, path, say=say,
                  after_step=after_step)
    finally:
        ctx.close()
        pg.close_sessions()
    return state


def rollback_cutover(cfg: CutoverConfig, dns: DnsProvider, path: Path, *, say: Say,
                     after_step: AfterStep | None = None) -> CutoverState:
    state = load_state(cfg, path, create=False)
    steps = rollback_steps(cfg)
    have = {r.name: r for r in state.rollback}
    state.rollback = [have.get(s.name, StepRecord(s.name)) for s in steps]
    if state.facts.dns_switched_at:
        say(f"warning: DNS pointed at the new site since {state.facts.dns_switched_at}; "
            "writes made there since are not copied back")
    ctx = Ctx(cfg, state, dns, say, checkpoint=lambda: state.save(path))
    failed: list[str] = []
    for step in steps:  # every step, even after one fails: the old site comes back first
        try:
            run_steps([step], state.rollback, ctx, state, path, say=say, after_step=after_step)
        except Exception as exc:  # noqa: BLE001 - reported below, the next step still runs
            say(f"{step.name}: FAILED: {exc}")
            failed.append(f"{step.name} ({exc})")
    if failed:
        # the facts stay (old address and TTL, pending cleanup): running
        # rollback again repeats only the steps that failed
        raise UserError("rollback could not undo: " + "; ".join(failed),
                        hint="fix the cause and run `amibake cutover rollback` again "
                             "(the steps already done are not repeated)")
    # the forward run starts over next time; the events keep the history
    state.facts.rolled_back_at = now_iso()
    keep = state.facts
    fresh = CutoverState.new(state.manifest, state.strategy, [s.name for s in forward_steps(cfg)])
    state.steps = fresh.steps
    state.rollback = []
    keep.old_address = keep.old_ttl = keep.ttl_lowered_at = None
    keep.maintenance_on_at = keep.freeze_at = keep.final_lsn = None
    keep.new_writable_at = keep.dns_switched_at = keep.dns_switched_ttl = None
    keep.sequences = []
    state.record("rollback", "done")
    state.save(path)
    return state


def finish_cutover(cfg: CutoverConfig, dns: DnsProvider, path: Path, *, say: Say) -> CutoverState:
    """After the watch period: the record's TTL raised back (checklist.raise_ttl)."""
    state = load_state(cfg, path, create=False)
    detail = checklist.raise_ttl(cfg, state, dns)
    say(detail)
    state.record("dns_raise_ttl", "done", detail)
    state.save(path)
    return state


def status_doc(cfg: CutoverConfig, path: Path) -> dict[str, Any]:
    state = load_state(cfg, path, create=False)
    f = state.facts
    doc: dict[str, Any] = {
        "state_file": str(path),
        "strategy": state.strategy,
        "complete": state.complete,
        "next_step": state.next_step,
        "steps": [{"name": r.name, "status": r.status, "started": r.started,
                   "finished": r.finished, "detail": r.detail, "error": r.error}
                  for r in state.steps],
        "downtime_s": state.downtime_s(),
        "pending_old_cleanup": f.pending_old_cleanup,
        "rolled_back_at": f.rolled_back_at,
        "rollback_dump": f.rollback_dump,
        "ttl_raised_at": f.ttl_raised_at,
        "events": state.events,
    }
    if f.dns_switched_at:
        exp = expiry(state)
        doc["dns_cache_expires"] = exp.isoformat()
        doc["dns_cache_seconds_left"] = countdown(exp, datetime.now(UTC))
    return doc


def status_text(doc: dict[str, Any]) -> str:
    lines = [f"cutover ({doc['strategy']}): "
             + ("complete" if doc["complete"] else f"next step {doc['next_step']}")]
    for s in doc["steps"]:
        extra = s["error"] or s["detail"]
        lines.append(f"  {s['status']:8} {s['name']}" + (f" — {extra}" if extra else ""))
    if doc["downtime_s"] is not None:
        lines.append(f"downtime (writes refused until DNS switched): {doc['downtime_s']:.2f} s")
    if "dns_cache_seconds_left" in doc:
        lines.append(f"resolvers may return the old address for {doc['dns_cache_seconds_left']} s "
                     f"more (until {doc['dns_cache_expires']})")
    if doc["pending_old_cleanup"]:
        lines.append("still on the old server: " + ", ".join(doc["pending_old_cleanup"]))
    if doc.get("rollback_dump"):
        lines.append(f"rollback point (old database before the cutover): {doc['rollback_dump']}")
    if doc.get("ttl_raised_at"):
        lines.append(f"TTL raised back at {doc['ttl_raised_at']}")
    elif doc["complete"]:
        lines.append("after the watch period: `amibake cutover finish` raises the TTL back")
    return "\n".join(lines)
