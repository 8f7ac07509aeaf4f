"""Tags the home AMI and its snapshots explicitly (CreateTags)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from builder.publish.context import PublishContext
from builder.publish.step_register import bundle_tag
from builder.steps import Outcome

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


def tag_resources(ec2: EC2Client, resources: list[str], ctx: PublishContext,
         extra: dict[str, str] | None = None) -> None:
    if resources:
        ec2.create_tags(Resources=resources, Tags=ctx.tag_list(extra))


class TagImageStep:
    """Tags the home AMI and its snapshots explicitly (CreateTags)."""

    name = "tag"

    def describe(self, ctx: PublishContext) -> str:
        return "tag AMI and snapshots: " + ", ".join(sorted(ctx.tags()))

    def run(self, ctx: PublishContext) -> None:
        home = ctx.home
        tag_resources(ctx.clients.ec2(home),
                      [ctx.image_ids[home], *ctx.snapshot_ids.get(home, [])], ctx, bundle_tag(ctx))

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        return None
