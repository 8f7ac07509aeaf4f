"""Copies the home AMI to the other regions."""

from __future__ import annotations

from typing import Any

from builder.publish.context import PublishContext
from builder.publish.images import delete_image_and_snapshots, snapshots_of, wait_available
from builder.publish.step_tag import tag_resources
from builder.steps import Outcome
from builder.wait import Waiter

COPY_WAITER = Waiter("the region copies to become available", attempts=720, interval=5.0,
                     hint="copies can take long for big images; gc removes leftovers")


class CopyToRegionsStep:
    """Copies the AMI to the other regions (tags copied explicitly, KMS per region)."""

    name = "copy-regions"

    def __init__(self, waiter: Waiter = COPY_WAITER) -> None:
        self.waiter = waiter

    def describe(self, ctx: PublishContext) -> str:
        if len(ctx.regions) < 2:
            return "no other regions"
        parts = []
        for region in ctx.regions[1:]:
            kms = ctx.kms_key_ids.get(region)
            parts.append(f"{region}" + (f" (encrypted with {kms})" if kms else ""))
        return "copy to " + ", ".join(parts)

    def run(self, ctx: PublishContext) -> None:
        source = ctx.image_ids[ctx.home]
        tag_list = ctx.tag_list()
        for region in ctx.regions[1:]:
            request: dict[str, Any] = {
                "SourceImageId": source,
                "SourceRegion": ctx.home,
                "Name": ctx.ami_name,
                "Description": f"{ctx.image.name} {ctx.image.version} copied from {ctx.home}",
                "ClientToken": f"{ctx.build_id}-{region}",
                "TagSpecifications": [
                    {"ResourceType": "image", "Tags": tag_list},
                    {"ResourceType": "snapshot", "Tags": tag_list},
                ],
            }
            kms = ctx.kms_key_ids.get(region)
            if kms or ctx.kms_key_ids.get(ctx.home):
                request["Encrypted"] = True
                if kms:
                    request["KmsKeyId"] = kms
            copy_id = ctx.clients.ec2(region).copy_image(**request)["ImageId"]
            ctx.track(self.name, "image", region, copy_id)
            ctx.image_ids[region] = copy_id
            ctx.out.say(f"copying {source} to {region} as {copy_id}")
        for region in ctx.regions[1:]:
            ec2 = ctx.clients.ec2(region)
            image = wait_available(ec2, ctx.image_ids[region], self.waiter, ctx.out,
                                   f"copy to {region}")
            snaps = snapshots_of(image)
            ctx.snapshot_ids[region] = snaps
            for snap in snaps:
                ctx.track(self.name, "snapshot", region, snap)
            tag_resources(ec2, [ctx.image_ids[region], *snaps], ctx)

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        for res in mine:
            if res.kind != "image":
                continue
            snaps = tuple(r.ident for r in mine if r.kind == "snapshot" and r.region == res.region)
            delete_image_and_snapshots(ctx.clients.ec2(res.region), res.ident, snaps)
            ctx.out.say(f"cleanup: deregistered copy {res.ident} in {res.region}")
            ctx.image_ids.pop(res.region, None)
        for res in mine:
            ctx.untrack(res.kind, res.region, res.ident)
