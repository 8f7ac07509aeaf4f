"""The one step runner, for publishing and for the cutover (after Packer's multistep).

A step has a `name`, `describe(ctx) -> str` (what it would do, for --dry-run
and the log) and `run(ctx)`, which may return a one-line detail. A step that
creates something also has `cleanup(ctx, outcome)`.

`run_steps` runs the steps in order. When one fails (or the user interrupts)
it runs the cleanups of every step that started, the failing one included,
in reverse order, then re-raises. The cleanups are told why the run ended,
as Packer's are (its `Cleanup` deletes only when the build was cancelled or
halted):

- `"halted"`: an abort (Ctrl-C, a user error, a validation failure, an
  error nobody can retry past): undo everything.
- `"resumable"`: the step raised `Resumable` (retries exhausted, the network
  went away): keep what the same command, run again, resumes from.

A `Journal` watches the run: it may skip steps already done (the cutover's
persisted state) and records starts, results, failures and failed cleanups.
A cleanup's own failure never hides the others: it goes to
`journal.cleanup_failed` and the remaining cleanups still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from builder.errors import UserError

Outcome = Literal["halted", "resumable"]


class Resumable(UserError):
    """A failure worth running the same command again for: cleanups keep what
    the next run resumes from (its hint says so)."""


class Step(Protocol):
    @property
    def name(self) -> str: ...

    def describe(self, ctx: Any) -> str: ...

    def run(self, ctx: Any) -> str | None: ...


class Journal:
    """Watches a run; the default watches nothing and skips nothing."""

    def skip(self, step: Step) -> bool:
        return False

    def started(self, step: Step) -> None:
        return None

    def finished(self, step: Step, detail: str | None) -> None:
        return None

    def failed(self, step: Step, exc: BaseException) -> None:
        return None

    def cleanup_failed(self, step: Step, exc: Exception) -> None:
        return None


def outcome_of(exc: BaseException) -> Outcome:
    return "resumable" if isinstance(exc, Resumable) else "halted"


def run_steps(
    steps: Sequence[Step],
    ctx: Any,
    *,
    journal: Journal | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run `steps` in order; on any failure clean up the started ones in reverse.

    `stop()` is asked before each step: True ends the run early, successfully
    (e.g. the image is already published), with no cleanup.
    """
    journal = journal or Journal()
    started: list[Step] = []
    try:
        for step in steps:
            if stop():
                break
            if journal.skip(step):
                continue
            started.append(step)
            journal.started(step)
            try:
                detail = step.run(ctx)
            except BaseException as exc:
                journal.failed(step, exc)
                raise
            journal.finished(step, detail)
    except BaseException as exc:
        clean_up(started, ctx, outcome_of(exc), journal)
        raise


def clean_up(started: Sequence[Step], ctx: Any, outcome: Outcome, journal: Journal) -> None:
    """The cleanups of `started`, last first; each failure is reported, none stops the rest."""
    for step in reversed(started):
        cleanup = getattr(step, "cleanup", None)
        if cleanup is None:
            continue
        try:
            cleanup(ctx, outcome)
        except Exception as err:  # a cleanup failure must not hide the others
            journal.cleanup_failed(step, err)


def describe_steps(steps: Sequence[Step], ctx: Any, *, stop: Callable[[], bool] = lambda: False
                   ) -> list[str]:
    """`name: what it would do` for each step with something to say (--dry-run)."""
    lines = []
    for step in steps:
        line = step.describe(ctx)
        if line:
            lines.append(f"{step.name}: {line}")
        if stop():
            break
    return lines
