"""Publishing a stored image: the steps in order, run or described (--dry-run)."""

from __future__ import annotations

from typing import Any

from builder.publish.context import PublishContext
from builder.publish.step_copy import CopyToRegionsStep
from builder.publish.step_finalize import FinalizeStep
from builder.publish.step_prevalidate import PrevalidateStep
from builder.publish.step_register import RegisterImageStep
from builder.publish.step_snapshot import UploadSnapshotStep
from builder.publish.step_ssm import SsmParametersStep
from builder.publish.step_tag import TagImageStep
from builder.publish.steps import plan_steps, run_steps


def ebs_steps(upload: UploadSnapshotStep | None = None) -> list[Any]:
    """The standard EBS-backed publish: every step, in order."""
    return [
        PrevalidateStep(),
        upload or UploadSnapshotStep(),
        RegisterImageStep(),
        TagImageStep(),
        CopyToRegionsStep(),
        SsmParametersStep(),
        FinalizeStep(),
    ]


def publish(ctx: PublishContext, steps: list[Any] | None = None) -> dict[str, Any]:
    """Run (or with ctx.dry_run, plan) the steps; returns the result document."""
    steps = steps if steps is not None else ebs_steps()
    doc: dict[str, Any] = {
        "name": ctx.image.name, "version": ctx.image.version, "ami_name": ctx.ami_name,
        "build_id": ctx.build_id, "regions": list(ctx.regions),
    }
    if ctx.dry_run:
        doc["plan"] = plan_steps(steps, ctx)
        doc["existing"] = bool(ctx.existing)
        doc["images"] = dict(ctx.existing)
        return doc
    with ctx.stack:
        run_steps(steps, ctx)
    doc["existing"] = bool(ctx.existing)
    doc["images"] = dict(ctx.image_ids)
    doc["snapshots"] = {r: list(s) for r, s in ctx.snapshot_ids.items()}
    doc["ssm_parameters"] = list(ctx.ssm_parameters)
    if ctx.upload is not None:
        up = ctx.upload
        doc["upload"] = {
            "snapshot_id": up.snapshot_id, "blocks": up.blocks_total, "blocks_sent": up.blocks_sent,
            "blocks_resumed": up.blocks_resumed, "bytes_sent": up.bytes_sent,
            "retries": up.retries, "seconds": round(up.seconds, 3),
        }
    return doc
