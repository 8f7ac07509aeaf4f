"""The persisted state machine: one JSON file, rewritten atomically after
every step, so a killed run resumes at the step it was in.

A step is `pending`, `running` (started; a crash leaves it so, and the next
run repeats it — steps are idempotent), `waiting` (stopped on purpose, e.g.
before the window), `done` or `failed`. Every transition is an event with a
UTC timestamp: the downtime is read from the events, not guessed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from builder.atomic import write_atomically
from builder.errors import UserError
from builder.inputs import read_text_input
from builder.steps import Journal, Step
from builder.steps import run_steps as shared_run_steps

STATE_VERSION = 1
#: the largest state file read back (a long run's events are a few hundred KiB)
MAX_STATE = 16 * 1024 * 1024
Status = Literal["pending", "running", "waiting", "done", "failed"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class StepRecord:
    name: str
    status: Status = "pending"
    started: str | None = None
    finished: str | None = None
    detail: str = ""
    error: str = ""


@dataclass
class Facts:
    """What the steps learnt and later steps (and rollback) rely on."""

    old_address: str | None = None
    old_ttl: int | None = None
    #: the TTL first read, before any run lowered it: kept across rollbacks,
    #: so a retry that finds the record still low restores the real one
    original_ttl: int | None = None
    ttl_lowered_at: str | None = None
    maintenance_on_at: str | None = None
    freeze_at: str | None = None
    final_lsn: str | None = None
    #: [schema, name, last_value or None] read on the old server at the freeze
    sequences: list[list[Any]] = field(default_factory=list)
    new_writable_at: str | None = None
    dns_switched_at: str | None = None
    dns_switched_ttl: int | None = None
    #: resources left on the old server when it was unreachable
    pending_old_cleanup: list[str] = field(default_factory=list)
    rolled_back_at: str | None = None
    #: the old database's dump taken before anything changed (rollback_dump)
    rollback_dump: str | None = None
    ttl_raised_at: str | None = None


@dataclass
class CutoverState:
    manifest: str
    strategy: str
    steps: list[StepRecord]
    facts: Facts = field(default_factory=Facts)
    events: list[dict[str, str]] = field(default_factory=list)
    rollback: list[StepRecord] = field(default_factory=list)
    version: int = STATE_VERSION
    created: str = field(default_factory=now_iso)

    # ------------------------------------------------------------ persistence
    @classmethod
    def new(cls, manifest: str, strategy: str, step_names: Sequence[str]) -> CutoverState:
        return cls(manifest, strategy, [StepRecord(n) for n in step_names])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CutoverState:
        if doc.get("version") != STATE_VERSION:
            raise UserError(f"unknown cutover state version {doc.get('version')!r}")
        known = {f.name for f in fields(Facts)}
        return cls(
            manifest=doc["manifest"],
            strategy=doc["strategy"],
            steps=[StepRecord(**s) for s in doc["steps"]],
            facts=Facts(**{k: v for k, v in doc.get("facts", {}).items() if k in known}),
            events=list(doc.get("events", [])),
            rollback=[StepRecord(**s) for s in doc.get("rollback", [])],
            version=doc["version"],
            created=doc.get("created", now_iso()),
        )

    def save(self, path: Path, *, sync_dir: bool = True) -> None:
        """Replace the file atomically (builder.atomic), private (0600) from
        creation; `sync_dir=False`: the new content is on disk, its rename
        may be lost in a crash (builder.atomic)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        write_atomically(path, text, mode=0o600, sync_dir=sync_dir)

    @classmethod
    def load(cls, path: Path) -> CutoverState:
        text = read_text_input(path, MAX_STATE, "cutover state")
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path}: cannot read the cutover state: {exc}",
                            hint="is this a state file amibake wrote? start over with a "
                                 "new --state file") from exc

    # ----------------------------------------------------------------- events
    def record(self, step: str, event: str, detail: str = "") -> None:
        self.events.append({"at": now_iso(), "step": step, "event": event, "detail": detail})

    def step(self, name: str) -> StepRecord:
        for rec in self.steps:
            if rec.name == name:
                return rec
        raise KeyError(name)

    def align(self, step_names: Sequence[str]) -> None:
        """Match the records to the current step list (a manifest edit may add
        or remove an optional step); records of steps already run are kept."""
        have = {r.name: r for r in self.steps}
        self.steps = [have.get(n, StepRecord(n)) for n in step_names]

    @property
    def complete(self) -> bool:
        return all(r.status == "done" for r in self.steps)

    @property
    def next_step(self) -> str | None:
        return next((r.name for r in self.steps if r.status != "done"), None)

    def downtime_s(self) -> float | None:
        """Writes refused (maintenance on / freeze) until the new site serves."""
        start = self.facts.maintenance_on_at or self.facts.freeze_at
        end = self.facts.dns_switched_at
        if not start or not end:
            return None
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class NotYet(UserError):
    """A step that must wait (the window has not opened): the run stops
    cleanly with the step `waiting`; running again resumes there."""


AfterStep = Callable[[str], None]


def run_steps(
    steps: Sequence[Step],
    records: list[StepRecord],
    ctx: Any,
    state: CutoverState,
    path: Path,
    *,
    say: Callable[[str], None],
    after_step: AfterStep | None = None,
) -> None:
    """Run every step not yet done, in order, saving the state around each
    (builder/steps.py's runner, with this state as its journal).

    `after_step(name)` is called after a step's work and before it is
    recorded as done: an exception there is a crash at the worst moment
    (tests inject one to prove each step is idempotent).
    """
    journal = _StateJournal(records, state, path, say, after_step)
    journal.ctx = ctx
    shared_run_steps(steps, ctx, journal=journal)


class _StateJournal(Journal):
    """Skips the steps recorded done; records and saves every transition."""

    def __init__(self, records: list[StepRecord], state: CutoverState, path: Path,
                 say: Callable[[str], None], after_step: AfterStep | None) -> None:
        self.by_name = {r.name: r for r in records}
        self.state, self.path, self.say, self.after_step = state, path, say, after_step
        self.ctx: Any = None

    def skip(self, step: Any) -> bool:
        return self.by_name[step.name].status == "done"

    def started(self, step: Any) -> None:
        rec = self.by_name[step.name]
        if rec.status == "running":
            self.say(f"{step.name}: resuming (the previous run stopped inside this step)")
        rec.status = "running"
        rec.started = now_iso()
        rec.error = ""
        self.state.record(step.name, "start")
        # one fsync, not two: should a crash lose this rename, the file
        # holds the state before it, where the step is not done either
        # (and runs again: steps are idempotent); the window pays for it
        self.state.save(self.path, sync_dir=False)
        self.say(f"{step.name}: {step.describe(self.ctx)}")

    def failed(self, step: Any, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            return  # Ctrl-C: the step stays "running" and the next run repeats it
        rec = self.by_name[step.name]
        waiting = isinstance(exc, NotYet)
        rec.status = "waiting" if waiting else "failed"
        rec.error = exc.message if isinstance(exc, NotYet) else str(exc)
        self.state.record(step.name, rec.status, rec.error)
        self.state.save(self.path)

    def finished(self, step: Any, detail: str | None) -> None:
        if self.after_step is not None:
            self.after_step(step.name)
        rec = self.by_name[step.name]
        rec.status = "done"
        rec.finished = now_iso()
        rec.detail = detail or ""
        self.state.record(step.name, "done", rec.detail)
        self.state.save(self.path)
        self.say(f"{step.name}: done{': ' + rec.detail if rec.detail else ''}")
