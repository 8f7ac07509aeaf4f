"""Marks every AMI and snapshot of the run complete (gc leaves them alone)."""

from __future__ import annotations

from builder.publish.context import TAG_COMPLETE, PublishContext
from builder.publish.upload_journal import journal_path
from builder.steps import Outcome


class FinalizeStep:
    """Marks every AMI and snapshot of the run complete (gc leaves them alone)."""

    name = "finalize"

    def describe(self, ctx: PublishContext) -> str:
        return f"mark resources of build {ctx.build_id} {TAG_COMPLETE}=true"

    def run(self, ctx: PublishContext) -> None:
        for region, image_id in ctx.image_ids.items():
            ctx.clients.ec2(region).create_tags(
                Resources=[image_id, *ctx.snapshot_ids.get(region, [])],
                Tags=[{"Key": TAG_COMPLETE, "Value": "true"}],
            )
        journal_path(ctx.image.disk_path).unlink(missing_ok=True)

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        return None
