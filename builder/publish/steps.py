"""The Step protocol and its runner (after Packer's multistep).

A step has a `name`, `plan(ctx) -> str` (what it would do, for --dry-run),
`run(ctx)` and `cleanup(ctx)`. `run_steps` runs the steps in order; when one
fails (or the user interrupts) it runs the cleanups of every step that
started, the failing one included, in reverse order, then re-raises. A
cleanup must undo only what its own step recorded in the context, and must
be a no-op when nothing was created.

Every resource a step creates is recorded in `ctx.ledger` (`track`) the
moment it exists and dropped (`untrack`) when its cleanup deleted it. When a
cleanup itself fails, the runner prints, for each resource that step still
holds, the exact command that deletes it by hand.

Composing steps (how H7's instance-store publisher reuses these):

    steps = [
        PrevalidateStep(),                       # checks, creates nothing
        UploadBundleStep(),                      # yours: sets ctx.root = BundleRoot(...)
        RegisterImageStep(),                     # reads ctx.root: EBS snapshot or S3 manifest
        TagImageStep(), CopyToRegionsStep(), SsmParametersStep(), FinalizeStep(),
    ]
    run_steps(steps, ctx)

Register/tag/copy/SSM never look at how the root was made: they use
`ctx.root` (`EbsRoot` or `BundleRoot`, see `context`) and `ctx.image_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from builder.errors import UserError
from builder.publish.context import PublishContext, Resource


class Step(Protocol):
    name: str

    def plan(self, ctx: PublishContext) -> str: ...

    def run(self, ctx: PublishContext) -> None: ...

    def cleanup(self, ctx: PublishContext) -> None: ...


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


def run_steps(steps: Sequence[Step], ctx: PublishContext) -> None:
    """Run `steps`; on any failure run the started steps' cleanups in reverse.

    A step may set `ctx.stop = True` (e.g. the image is already published):
    the remaining steps are skipped and nothing is cleaned up.
    """
    started: list[Step] = []
    try:
        for step in steps:
            if ctx.stop:
                break
            started.append(step)
            ctx.out.say(f"==> {step.name}")
            step.run(ctx)
    except BaseException as exc:
        leftovers = _clean_up(started, ctx)
        if leftovers:
            raise CleanupFailed(exc, leftovers) from exc
        raise


def _clean_up(started: Sequence[Step], ctx: PublishContext) -> list[Resource]:
    leftovers: list[Resource] = []
    for step in reversed(started):
        try:
            step.cleanup(ctx)
        except Exception as err:  # a cleanup failure must not hide the others
            mine = [r for r in ctx.ledger if r.step == step.name]
            ctx.out.say(f"cleanup of step {step.name!r} failed: {err}")
            for res in mine:
                ctx.out.say(f"  delete by hand: {res.delete_command()}")
            leftovers.extend(mine)
    return leftovers


def plan_steps(steps: Sequence[Step], ctx: PublishContext) -> list[str]:
    """Each step's plan line (for --dry-run); the prevalidation still runs."""
    lines = []
    for step in steps:
        line = step.plan(ctx)
        if line:
            lines.append(f"{step.name}: {line}")
        if ctx.stop:
            break
    return lines
