"""The instance-store root, part 2: the bundle uploaded to S3; sets `ctx.root`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from builder.errors import UserError
from builder.publish.bundle_upload import (
    UploadSettings,
    delete_objects,
    split_location,
    upload_bundle,
)
from builder.publish.context import BundleRoot, BundleState, InstanceStoreOptions, PublishContext
from builder.steps import Outcome, Resumable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def bundle_folder(ctx: PublishContext, options: InstanceStoreOptions) -> str:
    bucket, prefix = split_location(options.bucket)
    return f"{bucket}/{prefix}{ctx.image.name}/{ctx.image.version}"


class UploadBundleStep:
    """Uploads the bundle to S3 and sets ctx.root for the register step."""

    name = "upload-bundle"

    def __init__(self, options: InstanceStoreOptions, state: BundleState) -> None:
        self.options = options
        self.state = state
        self.created_bucket = ""

    def describe(self, ctx: PublishContext) -> str:
        return f"upload the bundle to s3://{bundle_folder(ctx, self.options)}/ in {ctx.home}"

    def run(self, ctx: PublishContext) -> None:
        assert self.state.bundle is not None, "the bundle step runs first"
        s3 = ctx.clients.s3(ctx.home)
        bucket, _ = split_location(self.options.bucket)

        def track(line: str) -> None:
            ctx.out.say(line)

        try:
            result = upload_bundle(s3, self.state.bundle.manifest_path,
                                   bundle_folder(ctx, self.options),
                                   settings=self.options.upload or UploadSettings(),
                                   progress=track)
        except Resumable as exc:  # this run's bundle is never made again: nothing to resume
            self._track_present(ctx, s3, bucket)
            raise UserError(str(exc), hint="publish again; what this run uploaded is "
                            "removed") from exc
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

    def _track_present(self, ctx: PublishContext, s3: S3Client, bucket: str) -> None:
        """After a failed upload: record what did reach the bucket, for cleanup."""
        prefix = bundle_folder(ctx, self.options).split("/", 1)[1] + "/"
        try:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        except ClientError:
            return
        for obj in listed:
            ctx.track(self.name, "s3-object", ctx.home, f"{bucket}/{obj['Key']}")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        objects = [r for r in mine if r.kind == "s3-object"]
        s3 = ctx.clients.s3(ctx.home)
        by_bucket: dict[str, list[str]] = {}
        for res in objects:
            bucket, key = res.ident.split("/", 1)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            delete_objects(s3, bucket, keys)
            ctx.out.say(f"cleanup: deleted {len(keys)} bundle objects from s3://{bucket}")
        for res in objects:
            ctx.untrack(res.kind, res.region, res.ident)
        for res in [r for r in mine if r.kind == "s3-bucket"]:
            if not s3.list_objects_v2(Bucket=res.ident, MaxKeys=1).get("KeyCount", 0):
                s3.delete_bucket(Bucket=res.ident)
                ctx.out.say(f"cleanup: deleted bucket {res.ident}")
            ctx.untrack(res.kind, res.region, res.ident)
        ctx.root = None
