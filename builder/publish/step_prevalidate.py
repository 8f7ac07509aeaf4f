"""Checks everything before anything is created (Packer's StepPreValidate)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from builder.aws.clients import check_credentials, error_code
from builder.bundle.certs import BundleCredentials
from builder.disk_digest import file_digest, split
from builder.errors import UserError
from builder.publish.bundle_upload import check_bucket, split_location
from builder.publish.context import (
    TAG_BUILD_ID,
    TAG_COMPLETE,
    TAG_DISK_DIGEST,
    TAG_DISK_SHA256,
    BundleState,
    InstanceStoreOptions,
    PublishContext,
)
from builder.publish.images import tags_of
from builder.publish.step_bundle import bundle_prefix
from builder.publish.step_register import ROOT_DEVICE
from builder.steps import Outcome

if TYPE_CHECKING:
    from mypy_boto3_ec2.literals import ArchitectureValuesType
    from mypy_boto3_ec2.type_defs import ImageTypeDef

    from builder.store import StoredImage

log = logging.getLogger("amibake.publish")

PLACEHOLDER_AMI = "ami-00000000000000000"


def _dry_run(call: Callable[[], Any], what: str, denied: list[str]) -> None:
    """A DryRun call: DryRunOperation means allowed, UnauthorizedOperation not."""
    try:
        call()
    except ClientError as exc:
        code = error_code(exc)
        if code == "DryRunOperation":
            return
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            denied.append(what)
            return
        log.debug("dry run of %s inconclusive: %s", what, code)


# --------------------------------------------------------------------- steps


class PrevalidateStep:
    """Checks everything before anything is created; creates nothing."""

    name = "prevalidate"

    def describe(self, ctx: PublishContext) -> str:
        self.run(ctx)
        if ctx.stop:
            return f"{ctx.ami_name} already published with this disk: " + ", ".join(
                f"{r}={i}" for r, i in ctx.existing.items()
            ) + "; nothing to do"
        return (f"credentials ok (account {ctx.account}), regions {', '.join(ctx.regions)} "
                f"exist, name {ctx.ami_name} free")

    def run(self, ctx: PublishContext) -> None:
        ctx.account = check_credentials(ctx.clients)["account"]
        home = ctx.clients.ec2(ctx.home)
        known = {r["RegionName"]: r.get("OptInStatus", "")
                 for r in home.describe_regions(AllRegions=True)["Regions"]}
        missing = [r for r in ctx.regions if r not in known]
        if missing:
            raise UserError(
                f"unknown region(s): {', '.join(missing)}",
                hint="fix publish.regions in the manifest",
            )
        closed = [r for r in ctx.regions if known[r] == "not-opted-in"]
        if closed:
            raise UserError(f"region(s) not enabled for this account: {', '.join(closed)}",
                            hint="opt in to the region, or remove it from publish.regions")
        self._check_name(ctx)
        if ctx.stop:
            return
        denied: list[str] = []
        _dry_run(lambda: home.register_image(
            DryRun=True, Name=ctx.ami_name,
            Architecture=cast("ArchitectureValuesType", ctx.image.architecture),
            RootDeviceName=ROOT_DEVICE, VirtualizationType="hvm"),
            f"ec2:RegisterImage in {ctx.home}", denied)
        for region in ctx.regions[1:]:
            _dry_run(lambda region=region: ctx.clients.ec2(region).copy_image(  # type: ignore[misc]
                DryRun=True, Name=ctx.ami_name, SourceImageId=PLACEHOLDER_AMI,
                SourceRegion=ctx.home), f"ec2:CopyImage in {region}", denied)
        if denied:
            raise UserError(
                f"not allowed: {', '.join(denied)}",
                hint="attach the policy printed by `amibake iam-policy --publish`",
            )

    def _check_name(self, ctx: PublishContext) -> None:
        found: dict[str, ImageTypeDef] = {}
        for region in ctx.regions:
            images = ctx.clients.ec2(region).describe_images(
                Owners=["self"], Filters=[{"Name": "name", "Values": [ctx.ami_name]}]
            )["Images"]
            if images:
                found[region] = images[0]
        if not found:
            return
        for region, image in found.items():
            tags = tags_of(image)
            digest = published_digest(tags)
            if digest is None:
                raise UserError(
                    f"AMI name {ctx.ami_name} is taken in {region} by {image['ImageId']}, "
                    "which amibake did not publish",
                    hint="change image.name_template or the version",
                )
            ours = same_kind_digest(ctx.image, digest)
            if digest != ours:
                raise UserError(
                    f"{ctx.image.name} {ctx.image.version} is already published as "
                    f"{image['ImageId']} in {region} with a different disk "
                    f"({digest[:30]}…, this one {ours[:30]}…)",
                    hint="bump the manifest's version: a published version never changes",
                )
            if tags.get(TAG_COMPLETE) != "true":
                raise UserError(
                    f"{image['ImageId']} in {region} is left over from an unfinished publish "
                    f"of {ctx.image.name} {ctx.image.version}",
                    hint=f"remove them with `amibake amis gc --build-id "
                    f"{tags.get(TAG_BUILD_ID, '?')} --min-age 0`, then publish again",
                )
        ctx.existing = {r: img["ImageId"] for r, img in found.items()}
        ctx.image_ids = dict(ctx.existing)
        ctx.stop = True
        absent = [r for r in ctx.regions if r not in found]
        if absent:
            ctx.out.say(f"note: {ctx.ami_name} is not in {', '.join(absent)}; nothing changed")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        return None


def published_digest(tags: dict[str, str]) -> str | None:
    """The disk digest an AMI's tags name (`algorithm:hex`); None when amibake did
    not publish it. AMIs of older amibakes carry the plain sha256 hex."""
    if TAG_DISK_DIGEST in tags:
        return tags[TAG_DISK_DIGEST]
    if TAG_DISK_SHA256 in tags:
        return "sha256:" + tags[TAG_DISK_SHA256]
    return None


def same_kind_digest(image: StoredImage, published: str) -> str:
    """The stored image's disk digest, taken with the algorithm of `published`
    when that is another one (the disk is hashed again)."""
    algorithm, _ = split(published)
    if algorithm == split(image.disk.digest)[0]:
        return image.disk.digest
    return file_digest(image.disk_path, algorithm)


class PrevalidateInstanceStoreStep:
    """The EBS prevalidation plus what a bundle needs, before anything exists."""

    name = "prevalidate"

    def __init__(self, options: InstanceStoreOptions, state: BundleState) -> None:
        self.options = options
        self.state = state
        self.base = PrevalidateStep()

    def describe(self, ctx: PublishContext) -> str:
        line = self.base.describe(ctx)
        if not ctx.stop:
            self._check(ctx)
            line += f"; certificates ok, bucket {split_location(self.options.bucket)[0]} usable"
        return line

    def run(self, ctx: PublishContext) -> None:
        self.base.run(ctx)
        if not ctx.stop:
            self._check(ctx)

    def _check(self, ctx: PublishContext) -> None:
        self.state.creds = BundleCredentials.load(
            self.options.cert, self.options.privatekey, self.options.ec2cert
        )
        bundle_prefix(ctx)
        bucket, _ = split_location(self.options.bucket)
        check_bucket(ctx.clients.s3(ctx.home), bucket, ctx.home)  # a missing one is created

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        return None
