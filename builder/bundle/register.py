"""Publishing an instance-store AMI: bundle → upload → register, as steps.

Only the first three steps are new; register, tag, region copies, SSM
parameters and finalize are H6's steps (builder/publish/ebs_steps.py), which
read nothing but `ctx.root` (a `BundleRoot` here: ImageLocation
`bucket/prefix/<prefix>.manifest.xml`) and `ctx.image_ids`. So naming,
tagging, SSM publication, idempotency (an already-published version stops
the run in prevalidate) and cleanup on failure (cleanups in reverse order:
deregister, then the uploaded objects and a bucket this run created) are one
implementation for both backings.

    doc = publish_instance_store(ctx, InstanceStoreOptions(cert=..., privatekey=...,
                                 ec2cert=..., bucket="my-bundles"))
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from builder.bundle.certs import BundleCredentials
from builder.bundle.s3_upload import (
    UploadResult,
    UploadSettings,
    delete_bundle,
    split_location,
    upload_bundle,
)
from builder.bundle.writer import BundleRequest, BundleResult, bundle_image, check_prefix
from builder.errors import UserError
from builder.publish.context import BundleRoot, PublishContext
from builder.publish.ebs_steps import (
    CopyToRegionsStep,
    FinalizeStep,
    PrevalidateStep,
    RegisterImageStep,
    SsmParametersStep,
    TagImageStep,
    publish,
)

#: matches what register_request() registers for a BundleRoot: root /dev/sda1,
#: ephemeral0 on /dev/sdb
BLOCK_DEVICE_MAPPING = {"ami": "sda1", "root": "/dev/sda1", "ephemeral0": "sdb"}

#: EC2's size limit for an instance-store root device
MAX_ROOT_BYTES = 10 * 1024**3


@dataclass(frozen=True)
class InstanceStoreOptions:
    """What an instance-store publish needs besides the PublishContext."""

    cert: Path  # user's X.509 certificate (PEM)
    privatekey: Path  # its private key
    ec2cert: Path  # EC2's bundling certificate for the home region
    bucket: str  # bucket[/prefix]; the image's name/version is appended
    workdir: Path | None = None  # where the bundle is written (default: a temp dir)
    upload: UploadSettings = field(default_factory=UploadSettings)


@dataclass
class _BundleState:
    """What the bundle and upload steps share (kept out of H6's context)."""

    creds: BundleCredentials | None = None
    bundle: BundleResult | None = None
    upload: UploadResult | None = None
    uploaded_keys: list[str] = field(default_factory=list)


def bundle_location(ctx: PublishContext, options: InstanceStoreOptions) -> str:
    bucket, prefix = split_location(options.bucket)
    return f"{bucket}/{prefix}{ctx.image.name}/{ctx.image.version}"


def bundle_prefix(ctx: PublishContext) -> str:
    return check_prefix(ctx.ami_name)


def check_instance_store_image(ctx: PublishContext) -> None:
    """What EC2 accepts for an instance-store root: at most 10 GiB, a disk that
    boots without UEFI (instance-store AMIs are registered without BootMode),
    and no snapshot encryption keys (there are no snapshots)."""
    img = ctx.image
    if img.disk.apparent_size > MAX_ROOT_BYTES:
        raise UserError(
            f"{img.name} {img.version}: the disk is {img.disk.apparent_size / 1024**3:.1f} GiB; "
            "an instance-store root device holds at most 10 GiB",
            hint="lower image.volume_size_gib, or publish with backing: ebs",
        )
    if ctx.kms_key_ids:
        raise UserError(
            "publish.kms_key_ids encrypt EBS snapshots; an instance-store AMI has none "
            "(its bundle is already AES-encrypted for EC2)",
            hint="remove publish.kms_key_ids, or publish with backing: ebs",
        )
    if img.boot_mode == "uefi" and img.architecture == "x86_64":
        raise UserError(
            f"{img.name} {img.version} boots only with UEFI; instance-store AMIs boot "
            "x86_64 instances with legacy BIOS",
            hint="use image.boot_mode uefi-preferred (the baked disk boots both ways), "
            "or publish with backing: ebs",
        )


class PrevalidateInstanceStoreStep:
    """H6's prevalidation plus what a bundle needs, before anything exists."""

    name = "prevalidate"

    def __init__(self, options: InstanceStoreOptions, state: _BundleState) -> None:
        self.options = options
        self.state = state
        self.base = PrevalidateStep()

    def plan(self, ctx: PublishContext) -> str:
        line = self.base.plan(ctx)
        if not ctx.stop:
            self._check(ctx)
            line += f"; certificates ok, bucket {split_location(self.options.bucket)[0]} usable"
        return line

    def run(self, ctx: PublishContext) -> None:
        self.base.run(ctx)
        if not ctx.stop:
            self._check(ctx)

    def _check(self, ctx: PublishContext) -> None:
        check_instance_store_image(ctx)
        self.state.creds = BundleCredentials.load(
            self.options.cert, self.options.privatekey, self.options.ec2cert
        )
        bundle_prefix(ctx)
        bucket, _ = split_location(self.options.bucket)
        s3 = ctx.clients.client("s3", ctx.home)
        try:
            head = s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                raise UserError(f"bucket {bucket} exists but this account cannot use it",
                                hint="set publish.bucket to a bucket you own") from exc
            if status != 404:
                raise
            return  # created by the upload step
        where = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get(
            "x-amz-bucket-region", ctx.home)
        if where != ctx.home:
            raise UserError(f"bucket {bucket} is in {where}, not {ctx.home}",
                            hint="bundles must be in the home region of the AMI")

    def cleanup(self, ctx: PublishContext) -> None:
        return None


class BundleStep:
    """Bundles the stored image's disk into a work directory."""

    name = "bundle"

    def __init__(self, options: InstanceStoreOptions, state: _BundleState) -> None:
        self.options = options
        self.state = state

    def plan(self, ctx: PublishContext) -> str:
        return (f"bundle {ctx.image.disk_path} as {bundle_prefix(ctx)} for account "
                f"{ctx.account} (tar, gzip, AES-128-CBC, 10 MiB parts)")

    def run(self, ctx: PublishContext) -> None:
        creds = self.state.creds or BundleCredentials.load(
            self.options.cert, self.options.privatekey, self.options.ec2cert)
        workdir = Path(tempfile.mkdtemp(prefix="amibake-bundle-", dir=self.options.workdir))
        ctx.stack.callback(shutil.rmtree, workdir, True)  # the local bundle is transient
        self.state.bundle = bundle_image(
            BundleRequest(
                image=ctx.image.disk_path, destination=workdir, prefix=bundle_prefix(ctx),
                user=ctx.account, architecture=ctx.image.architecture,
                block_device_mapping=BLOCK_DEVICE_MAPPING,
            ),
            creds,
        )
        m = self.state.bundle.manifest
        ctx.out.say(f"bundled {m.size} bytes into {len(m.parts)} parts ({m.bundled_size} bytes)")

    def cleanup(self, ctx: PublishContext) -> None:
        return None  # the work directory goes with ctx.stack


class UploadBundleStep:
    """Uploads the bundle to S3 and sets ctx.root for the register step."""

    name = "upload-bundle"

    def __init__(self, options: InstanceStoreOptions, state: _BundleState) -> None:
        self.options = options
        self.state = state
        self.created_bucket = ""

    def plan(self, ctx: PublishContext) -> str:
        return f"upload the bundle to s3://{bundle_location(ctx, self.options)}/ in {ctx.home}"

    def run(self, ctx: PublishContext) -> None:
        assert self.state.bundle is not None, "the bundle step runs first"
        s3 = ctx.clients.client("s3", ctx.home)
        bucket, _ = split_location(self.options.bucket)

        def track(line: str) -> None:
            ctx.out.say(line)

        try:
            result = upload_bundle(s3, self.state.bundle.manifest_path,
                                   bundle_location(ctx, self.options),
                                   settings=self.options.upload, progress=track)
        except BaseException:
            self._track_present(ctx, s3, bucket)
            raise
        self.state.upload = result
        if result.created_bucket:
            self.created_bucket = bucket
            ctx.track(self.name, "s3-bucket", ctx.home, bucket)
        for key in (*result.uploaded, *result.skipped):
            ctx.track(self.name, "s3-object", ctx.home, f"{bucket}/{key}")
        ctx.root = BundleRoot(result.image_location)

    def _track_present(self, ctx: PublishContext, s3: Any, bucket: str) -> None:
        """After a failed upload: record what did reach the bucket, for cleanup."""
        prefix = bundle_location(ctx, self.options).split("/", 1)[1] + "/"
        try:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        except ClientError:
            return
        for obj in listed:
            ctx.track(self.name, "s3-object", ctx.home, f"{bucket}/{obj['Key']}")

    def cleanup(self, ctx: PublishContext) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        objects = [r for r in mine if r.kind == "s3-object"]
        s3 = ctx.clients.client("s3", ctx.home)
        by_bucket: dict[str, list[str]] = {}
        for res in objects:
            bucket, key = res.ident.split("/", 1)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            delete_bundle(s3, bucket, keys)
            ctx.out.say(f"cleanup: deleted {len(keys)} bundle objects from s3://{bucket}")
        for res in objects:
            ctx.untrack(res.kind, res.region, res.ident)
        for res in [r for r in mine if r.kind == "s3-bucket"]:
            if not s3.list_objects_v2(Bucket=res.ident, MaxKeys=1).get("KeyCount", 0):
                s3.delete_bucket(Bucket=res.ident)
                ctx.out.say(f"cleanup: deleted bucket {res.ident}")
            ctx.untrack(res.kind, res.region, res.ident)
        ctx.root = None


def instance_store_steps(options: InstanceStoreOptions) -> list[Any]:
    """Every step of an instance-store publish, in order."""
    state = _BundleState()
    return [
        PrevalidateInstanceStoreStep(options, state),
        BundleStep(options, state),
        UploadBundleStep(options, state),
        RegisterImageStep(),
        TagImageStep(),
        CopyToRegionsStep(),
        SsmParametersStep(),
        FinalizeStep(),
    ]


def publish_instance_store(ctx: PublishContext, options: InstanceStoreOptions) -> dict[str, Any]:
    """Publish `ctx.image` as an instance-store AMI; returns publish()'s document
    plus the bundle's S3 location."""
    ctx.backing = "instance-store"
    steps = instance_store_steps(options)
    doc = publish(ctx, steps)
    state: _BundleState = steps[1].state
    doc["backing"] = "instance-store"
    if state.upload is not None:
        doc["bundle"] = {
            "image_location": state.upload.image_location,
            "uploaded": len(state.upload.uploaded),
            "skipped": len(state.upload.skipped),
        }
    return doc
