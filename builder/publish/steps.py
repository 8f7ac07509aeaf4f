"""Publishing runs its steps with the one step runner (builder/steps.py).

A publish step has a `name`, `describe(ctx) -> str` (what it would do, for
--dry-run), `run(ctx)` and `cleanup(ctx, outcome)`. A cleanup must undo only
what its own step recorded in the context, and must be a no-op when nothing
was created. As in Packer, the cleanup is told why the run ended: "halted"
(an abort: undo everything) or "resumable" (a `builder.steps.Resumable`
failure: keep what the same command, run again, resumes from, e.g. a
half-uploaded snapshot and its journal).

Every resource a step creates is recorded in `ctx.ledger` (`track`) the
moment it exists and dropped (`untrack`) when its cleanup deleted it or kept
it on purpose. When a cleanup itself fails, the run prints, for each resource
that step still holds, the exact command that deletes it by hand.

Register/tag/copy/SSM never look at how the root was made: they use
`ctx.root` (`EbsRoot` or `BundleRoot`, see `context`) and `ctx.image_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from builder import steps as runner
from builder.errors import UserError
from builder.publish.context import PublishContext, Resource


class Step(Protocol):
    name: str

    def describe(self, ctx: PublishContext) -> str: ...

    def run(self, ctx: PublishContext) -> None: ...

    def cleanup(self, ctx: PublishContext, outcome: runner.Outcome) -> None: ...


class CleanupFailed(UserError):
    """A run failed and at least one cleanup failed too: things to delete by hand."""

    def __init__(self, original: BaseException, leftovers: Sequence[Resource]) -> None:
        commands = "; ".join(r.delete_command() for r in leftovers)
        super().__init__(
            f"{original} — and cleanup failed, {len(leftovers)} resource(s) remain",
            hint=f"delete by hand: {commands}",
        )
        self.original = original
        self.leftovers = tuple(leftovers)


class _LedgerJournal(runner.Journal):
    """Says each step; on a failed cleanup, the resources that step still holds."""

    def __init__(self, ctx: PublishContext) -> None:
        self.ctx = ctx
        self.leftovers: list[Resource] = []

    def started(self, step: Any) -> None:
        self.ctx.out.say(f"==> {step.name}")

    def cleanup_failed(self, step: Any, exc: Exception) -> None:
        mine = [r for r in self.ctx.ledger if r.step == step.name]
        self.ctx.out.say(f"cleanup of step {step.name!r} failed: {exc}")
        for res in mine:
            self.ctx.out.say(f"  delete by hand: {res.delete_command()}")
        self.leftovers.extend(mine)


def run_steps(steps: Sequence[Step], ctx: PublishContext) -> None:
    """Run `steps`; on any failure run the started steps' cleanups in reverse.

    A step may set `ctx.stop = True` (e.g. the image is already published):
    the remaining steps are skipped and nothing is cleaned up.
    """
    journal = _LedgerJournal(ctx)
    try:
        runner.run_steps(steps, ctx, journal=journal, stop=lambda: ctx.stop)
    except BaseException as exc:
        if journal.leftovers:
            raise CleanupFailed(exc, journal.leftovers) from exc
        raise


def describe_steps(steps: Sequence[Step], ctx: PublishContext) -> list[str]:
    """What each step would do (--dry-run); the prevalidation still runs."""
    return runner.describe_steps(steps, ctx, stop=lambda: ctx.stop)
