"""The steps that publish an EBS-backed AMI, in order:

prevalidate → upload snapshot → register → tag → copy to regions → SSM
parameters → finalize. SSM parameters come after the copies so `latest`
never points at a version whose copies failed; finalize marks every resource
`amibake:complete=true`, which is what `gc` uses to tell finished runs from
crashed ones.

Register, tag, copy, SSM and finalize read only `ctx.root` and
`ctx.image_ids`, so an instance-store publisher reuses them unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from packaging.version import InvalidVersion, Version

from builder.aws.clients import check_credentials, error_code
from builder.aws.ebs_upload import BLOCK_SIZE, UploadOptions, progress_path, upload_disk
from builder.aws.progress import Progress
from builder.errors import UserError
from builder.publish.context import (
    TAG_BUILD_ID,
    TAG_BUNDLE,
    TAG_COMPLETE,
    TAG_DISK_SHA256,
    TAG_VERSION,
    BundleRoot,
    EbsRoot,
    PublishContext,
)
from builder.wait import NotYet, Waiter, wait_for

log = logging.getLogger("amibake.publish")

ROOT_DEVICE = "/dev/xvda"
IMAGE_WAITER = Waiter("the AMI to become available", attempts=240, interval=5.0,
                      hint="check the image in the EC2 console; gc removes leftovers")
COPY_WAITER = Waiter("the region copies to become available", attempts=720, interval=5.0,
                     hint="copies can take long for big images; gc removes leftovers")
PLACEHOLDER_AMI = "ami-00000000000000000"


def _snapshots_of(image: dict[str, Any]) -> list[str]:
    return [
        bdm["Ebs"]["SnapshotId"]
        for bdm in image.get("BlockDeviceMappings", [])
        if bdm.get("Ebs", {}).get("SnapshotId")
    ]


def _tags_of(image: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def describe_image(ec2: Any, image_id: str) -> dict[str, Any] | None:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            return None
        raise
    return images[0] if images else None


def delete_image_and_snapshots(
    ec2: Any, image_id: str, extra_snapshots: tuple[str, ...] = ()
) -> list[str]:
    """Deregister `image_id` and delete its snapshots; returns the snapshots deleted."""
    image = describe_image(ec2, image_id)
    snaps = list(dict.fromkeys([*(_snapshots_of(image) if image else []), *extra_snapshots]))
    if image is not None:
        ec2.deregister_image(ImageId=image_id)
    for snap in snaps:
        try:
            ec2.delete_snapshot(SnapshotId=snap)
        except ClientError as exc:
            if "NotFound" not in error_code(exc):
                raise
    return snaps


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

    def plan(self, ctx: PublishContext) -> str:
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
            DryRun=True, Name=ctx.ami_name, Architecture=ctx.image.architecture,
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
        found: dict[str, dict[str, Any]] = {}
        for region in ctx.regions:
            images = ctx.clients.ec2(region).describe_images(
                Owners=["self"], Filters=[{"Name": "name", "Values": [ctx.ami_name]}]
            )["Images"]
            if images:
                found[region] = images[0]
        if not found:
            return
        for region, image in found.items():
            tags = _tags_of(image)
            digest = tags.get(TAG_DISK_SHA256)
            if digest is None:
                raise UserError(
                    f"AMI name {ctx.ami_name} is taken in {region} by {image['ImageId']}, "
                    "which amibake did not publish",
                    hint="change image.name_template or the version",
                )
            if digest != ctx.image.disk.sha256:
                raise UserError(
                    f"{ctx.image.name} {ctx.image.version} is already published as "
                    f"{image['ImageId']} in {region} with a different disk "
                    f"(sha256 {digest[:12]}…, this one {ctx.image.disk.sha256[:12]}…)",
                    hint="bump the manifest's version: a published version never changes",
                )
            if tags.get(TAG_COMPLETE) != "true":
                raise UserError(
                    f"{image['ImageId']} in {region} is left over from an unfinished publish "
                    f"of {ctx.image.name} {ctx.image.version}",
                    hint=f"remove them with `amibake gc --build-id "
                    f"{tags.get(TAG_BUILD_ID, '?')} --min-age 0`, then publish again",
                )
        ctx.existing = {r: img["ImageId"] for r, img in found.items()}
        ctx.image_ids = dict(ctx.existing)
        ctx.stop = True
        absent = [r for r in ctx.regions if r not in found]
        if absent:
            ctx.out.say(f"note: {ctx.ami_name} is not in {', '.join(absent)}; nothing changed")

    def cleanup(self, ctx: PublishContext) -> None:
        return None


class UploadSnapshotStep:
    """Uploads the disk to a new EBS snapshot with the EBS direct APIs."""

    name = "upload-snapshot"

    def __init__(self, options: UploadOptions | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.options = options
        self.sleep = sleep

    def plan(self, ctx: PublishContext) -> str:
        img = ctx.image
        return (f"create snapshot in {ctx.home} from {img.disk_path} "
                f"({img.disk.apparent_size} bytes apparent, ~{img.disk.used_size} bytes used, "
                f"{BLOCK_SIZE // 1024} KiB blocks, zero blocks skipped)")

    def run(self, ctx: PublishContext) -> None:
        options = self.options or UploadOptions(
            concurrency=ctx.upload_concurrency,
            kms_key_arn=ctx.kms_key_ids.get(ctx.home),
            description=f"{ctx.ami_name} root volume",
            tags={t["Key"]: t["Value"] for t in ctx.tag_list()},
        )
        progress = Progress(ctx.out, max(ctx.image.disk.used_size, 1), "upload")

        def on_snapshot(snapshot_id: str) -> None:
            ctx.track(self.name, "snapshot", ctx.home, snapshot_id)
            ctx.root = EbsRoot(snapshot_id)

        extra = {"sleep": self.sleep} if self.sleep else {}
        result = upload_disk(
            ctx.clients.ebs(ctx.home), ctx.clients.ec2(ctx.home), ctx.image.disk_path,
            disk_sha256=ctx.image.disk.sha256, requested_gib=ctx.image.volume_size_gib,
            options=options, on_snapshot=on_snapshot, on_progress=progress.advance,
            on_total=progress.set_total, **extra,
        )
        progress.finish()
        ctx.upload = result
        ctx.snapshot_ids.setdefault(ctx.home, []).append(result.snapshot_id)
        ctx.out.say(f"snapshot {result.snapshot_id}: {result.blocks_sent} blocks sent, "
                    f"{result.blocks_resumed} resumed, {result.retries} retries")

    def cleanup(self, ctx: PublishContext) -> None:
        for res in [r for r in ctx.ledger if r.step == self.name]:
            try:
                ctx.clients.ec2(res.region).delete_snapshot(SnapshotId=res.ident)
            except ClientError as exc:
                if "NotFound" not in error_code(exc):
                    raise
            ctx.untrack(res.kind, res.region, res.ident)
            ctx.out.say(f"cleanup: deleted snapshot {res.ident} in {res.region}")
        progress_path(ctx.image.disk_path).unlink(missing_ok=True)


RequestBuilder = Callable[[PublishContext], dict[str, Any]]


def bundle_tag(ctx: PublishContext) -> dict[str, str]:
    """The home AMI of an instance-store publish names its bundle (prune and gc
    delete it); nothing for EBS-backed AMIs."""
    if isinstance(ctx.root, BundleRoot):
        return {TAG_BUNDLE: ctx.root.image_location}
    return {}


def register_request(ctx: PublishContext) -> dict[str, Any]:
    """RegisterImage parameters for `ctx.root` (EBS snapshot or S3 bundle)."""
    img = ctx.image
    request: dict[str, Any] = {
        "Name": ctx.ami_name,
        "Description": f"{img.name} {img.version} (amibake {img.id}, roles {','.join(img.roles)})",
        "Architecture": img.architecture,
        "VirtualizationType": "hvm",
        "BootMode": img.boot_mode,
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "ImdsSupport": "v2.0",
        "TagSpecifications": [{"ResourceType": "image", "Tags": ctx.tag_list()}],
    }
    if isinstance(ctx.root, EbsRoot):
        request["RootDeviceName"] = ROOT_DEVICE
        request["BlockDeviceMappings"] = [{
            "DeviceName": ROOT_DEVICE,
            "Ebs": {
                "SnapshotId": ctx.root.snapshot_id,
                "VolumeType": "gp3",
                "VolumeSize": ctx.upload.volume_size_gib if ctx.upload else img.volume_size_gib,
                "DeleteOnTermination": True,
            },
        }]
    elif isinstance(ctx.root, BundleRoot):
        # An instance-store AMI: the root device is the bundle in S3, so no Ebs
        # mapping (and no volume size: the bundle's image size is the root's);
        # RootDeviceName and the ephemeral0 mapping match the bundle manifest's
        # block_device_mapping (ami=sda1, root=/dev/sda1, ephemeral0=sdb). No
        # BootMode: UEFI needs an EBS root, and left out EC2 uses the
        # architecture's default (legacy BIOS on x86_64), which the baked disk
        # (GPT with BIOS and UEFI boot) supports.
        del request["BootMode"]
        request["ImageLocation"] = ctx.root.image_location
        request["RootDeviceName"] = "/dev/sda1"
        request["BlockDeviceMappings"] = [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
        request["TagSpecifications"] = [{"ResourceType": "image",
                                         "Tags": ctx.tag_list(bundle_tag(ctx))}]
    else:
        raise RuntimeError("register step needs ctx.root (set by an upload step)")
    return request


def wait_available(ec2: Any, image_id: str, waiter: Waiter, ctx: PublishContext,
                   label: str) -> dict[str, Any]:
    tries = 0

    def check() -> dict[str, Any]:
        nonlocal tries
        tries += 1
        image = describe_image(ec2, image_id)
        state = image["State"] if image else "missing"
        if state == "available" and image is not None:
            return image
        if state in ("failed", "invalid", "deregistered", "missing", "error"):
            reason = (image or {}).get("StateReason", {}).get("Message", "")
            raise UserError(f"{label}: {image_id} is {state} {reason}".strip())
        ctx.out.say(f"{label}: {image_id} {state} ({tries}/{waiter.attempts})")
        raise NotYet(f"{image_id} is {state}")

    return wait_for(check, waiter)


class RegisterImageStep:
    """Registers the AMI in the home region from `ctx.root`."""

    name = "register"

    def __init__(self, request_builder: RequestBuilder = register_request,
                 waiter: Waiter = IMAGE_WAITER) -> None:
        self.request_builder = request_builder
        self.waiter = waiter

    def plan(self, ctx: PublishContext) -> str:
        if ctx.backing == "instance-store":
            return (f"register {ctx.ami_name} in {ctx.home} ({ctx.image.architecture}, "
                    "instance-store root from the S3 bundle, IMDSv2 only, ENA)")
        return (f"register {ctx.ami_name} in {ctx.home} ({ctx.image.architecture}, "
                f"{ctx.image.boot_mode}, gp3 root, IMDSv2 only, ENA)")

    def run(self, ctx: PublishContext) -> None:
        ec2 = ctx.clients.ec2(ctx.home)
        image_id = ec2.register_image(**self.request_builder(ctx))["ImageId"]
        ctx.track(self.name, "image", ctx.home, image_id)
        ctx.image_ids[ctx.home] = image_id
        image = wait_available(ec2, image_id, self.waiter, ctx, "register")
        snaps = ctx.snapshot_ids.setdefault(ctx.home, [])
        for snap in _snapshots_of(image):
            if snap not in snaps:
                snaps.append(snap)
                ctx.track(self.name, "snapshot", ctx.home, snap)
        ctx.out.say(f"registered {image_id} in {ctx.home}")

    def cleanup(self, ctx: PublishContext) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        ec2 = ctx.clients.ec2(ctx.home)
        for res in mine:
            if res.kind == "image":
                delete_image_and_snapshots(
                    ec2, res.ident,
                    tuple(r.ident for r in mine if r.kind == "snapshot"),
                )
                ctx.out.say(f"cleanup: deregistered {res.ident} in {res.region}")
        for res in mine:
            ctx.untrack(res.kind, res.region, res.ident)
        ctx.image_ids.pop(ctx.home, None)


def _tag(ec2: Any, resources: list[str], ctx: PublishContext,
         extra: dict[str, str] | None = None) -> None:
    if resources:
        ec2.create_tags(Resources=resources, Tags=ctx.tag_list(extra))


class TagImageStep:
    """Tags the home AMI and its snapshots explicitly (CreateTags)."""

    name = "tag"

    def plan(self, ctx: PublishContext) -> str:
        return "tag AMI and snapshots: " + ", ".join(sorted(ctx.tags()))

    def run(self, ctx: PublishContext) -> None:
        home = ctx.home
        _tag(ctx.clients.ec2(home), [ctx.image_ids[home], *ctx.snapshot_ids.get(home, [])], ctx,
             bundle_tag(ctx))

    def cleanup(self, ctx: PublishContext) -> None:
        return None


class CopyToRegionsStep:
    """Copies the AMI to the other regions (tags copied explicitly, KMS per region)."""

    name = "copy-regions"

    def __init__(self, waiter: Waiter = COPY_WAITER) -> None:
        self.waiter = waiter

    def plan(self, ctx: PublishContext) -> str:
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
            image = wait_available(ec2, ctx.image_ids[region], self.waiter, ctx,
                                   f"copy to {region}")
            snaps = _snapshots_of(image)
            ctx.snapshot_ids[region] = snaps
            for snap in snaps:
                ctx.track(self.name, "snapshot", region, snap)
            _tag(ec2, [ctx.image_ids[region], *snaps], ctx)

    def cleanup(self, ctx: PublishContext) -> None:
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


def ssm_name(prefix: str, name: str, leaf: str) -> str:
    return f"{prefix.rstrip('/')}/{name}/{leaf}"


def _version_of(ec2: Any, image_id: str) -> Version | None:
    image = describe_image(ec2, image_id)
    try:
        return Version(_tags_of(image or {}).get(TAG_VERSION, ""))
    except InvalidVersion:
        return None


class SsmParametersStep:
    """`<prefix>/<name>/<version>` and `<prefix>/<name>/latest` (aws:ec2:image) per region.

    `latest` only moves forward: publishing an older version leaves it alone.
    Cleanup restores the previous `latest` and deletes the version parameter.
    """

    name = "ssm-parameters"

    def __init__(self) -> None:
        self.previous_latest: dict[str, str | None] = {}

    def plan(self, ctx: PublishContext) -> str:
        return "set " + ", ".join(
            ssm_name(ctx.ssm_prefix, ctx.image.name, leaf) for leaf in (ctx.image.version, "latest")
        ) + f" in {', '.join(ctx.regions)}"

    def run(self, ctx: PublishContext) -> None:
        version = Version(ctx.image.version)
        for region in ctx.regions:
            ssm = ctx.clients.ssm(region)
            image_id = ctx.image_ids[region]
            names = [ssm_name(ctx.ssm_prefix, ctx.image.name, ctx.image.version)]
            latest = ssm_name(ctx.ssm_prefix, ctx.image.name, "latest")
            try:
                previous: str | None = ssm.get_parameter(Name=latest)["Parameter"]["Value"]
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    raise
                previous = None
            current = _version_of(ctx.clients.ec2(region), previous) if previous else None
            if current is None or current <= version:
                names.append(latest)
                self.previous_latest[region] = previous
            for name in names:
                ssm.put_parameter(Name=name, Value=image_id, Type="String",
                                  DataType="aws:ec2:image", Overwrite=True)
                ctx.track(self.name, "ssm-parameter", region, name)
                ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name,
                                         Tags=[t for t in ctx.tag_list() if t["Key"] != "Name"])
                ctx.ssm_parameters.append(f"{region}:{name}")

    def cleanup(self, ctx: PublishContext) -> None:
        for res in [r for r in ctx.ledger if r.step == self.name]:
            ssm = ctx.clients.ssm(res.region)
            previous = self.previous_latest.get(res.region)
            if res.ident.endswith("/latest") and previous:
                ssm.put_parameter(Name=res.ident, Value=previous, Type="String",
                                  DataType="aws:ec2:image", Overwrite=True)
            else:
                try:
                    ssm.delete_parameter(Name=res.ident)
                except ClientError as exc:
                    if error_code(exc) != "ParameterNotFound":
                        raise
            ctx.untrack(res.kind, res.region, res.ident)


class FinalizeStep:
    """Marks every AMI and snapshot of the run complete (gc leaves them alone)."""

    name = "finalize"

    def plan(self, ctx: PublishContext) -> str:
        return f"mark resources of build {ctx.build_id} {TAG_COMPLETE}=true"

    def run(self, ctx: PublishContext) -> None:
        for region, image_id in ctx.image_ids.items():
            ctx.clients.ec2(region).create_tags(
                Resources=[image_id, *ctx.snapshot_ids.get(region, [])],
                Tags=[{"Key": TAG_COMPLETE, "Value": "true"}],
            )
        progress_path(ctx.image.disk_path).unlink(missing_ok=True)

    def cleanup(self, ctx: PublishContext) -> None:
        return None


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
    from builder.publish.steps import plan_steps, run_steps

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
