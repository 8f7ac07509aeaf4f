"""Publishing a stored image: the steps in order, run or described (--dry-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from builder.errors import UserError
from builder.manifest.model import BACKINGS
from builder.output import Output
from builder.publish.context import BundleState, InstanceStoreOptions, PublishContext, ami_name
from builder.publish.step_bundle import BundleStep
from builder.publish.step_bundle_upload import UploadBundleStep
from builder.publish.step_copy import CopyToRegionsStep
from builder.publish.step_finalize import FinalizeStep
from builder.publish.step_prevalidate import PrevalidateInstanceStoreStep, PrevalidateStep
from builder.publish.step_register import RegisterImageStep
from builder.publish.step_snapshot import UploadSnapshotStep
from builder.publish.step_ssm import SsmParametersStep
from builder.publish.step_tag import TagImageStep
from builder.publish.steps import describe_steps, run_steps


class BundleOptions(Protocol):
    """Where an instance-store publish takes its certificates and bucket from."""

    def options(self, manifest: Any) -> Any: ...


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
    """Run (or with ctx.dry_run, describe) the steps; returns the result document."""
    steps = steps if steps is not None else ebs_steps()
    doc: dict[str, Any] = {
        "name": ctx.image.name, "version": ctx.image.version, "ami_name": ctx.ami_name,
        "build_id": ctx.build_id, "regions": list(ctx.regions),
    }
    if ctx.dry_run:
        doc["actions"] = describe_steps(steps, ctx)
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


def instance_store_steps(options: InstanceStoreOptions) -> list[Any]:
    """Every step of an instance-store publish, in order."""
    state = BundleState()
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
    state: BundleState = steps[1].state
    doc["backing"] = "instance-store"
    if state.upload is not None:
        doc["bundle"] = {
            "image_location": state.upload.image_location,
            "uploaded": len(state.upload.uploaded),
            "skipped": len(state.upload.skipped),
        }
    return doc


def check_backing_override(manifest: Any) -> None:
    """`--backing instance-store` for a manifest that says ebs: the checks the
    manifest's load would have made had it said instance-store (one home:
    builder/manifest/checks.py), all problems in one error."""
    from builder.manifest.checks import check_instance_store

    problems: list[str] = []
    check_instance_store(manifest, lambda path, msg: problems.append(f"{path}: {msg}"))
    problems = [p for p in problems if not p.startswith("image.backing:")]  # --bucket may give it
    if problems:
        raise UserError(f"{manifest.source}: cannot publish as instance-store: "
                        + "; ".join(problems), hint="publish with backing ebs, or fix the manifest")


def regions_for(manifest: Any, override: str | None) -> tuple[str, ...]:
    regions = tuple(manifest.publish.regions)
    if override:
        regions = (override, *[r for r in regions if r != override])
    if not regions:
        raise UserError("publish.regions is empty", hint="list at least one region")
    return regions


def publish_stored_image(
    manifest: Any,
    image_dir: Path,
    target: Any,
    out: Output,
    *,
    regions: tuple[str, ...] | None = None,
    dry_run: bool = False,
    concurrency: int = 8,
    backing: str | None = None,
    bundle: BundleOptions | None = None,
) -> dict[str, Any]:
    """Publish the stored image in `image_dir` (for `publish` and `bake --target aws`).

    `target` is a `builder.aws.clients.AwsTarget`. Without AWS credentials it
    says so and returns `{"published": False, ...}`: the image stays local.
    `backing` (default: the manifest's image.backing) picks the EBS snapshot
    path or the instance-store bundle path (`bundle` gives its certificates and
    bucket); both run the same register, tag, copy, SSM and finalize steps.
    """
    from botocore.exceptions import ClientError

    from builder.aws.clients import NO_CREDENTIALS, NO_CREDENTIALS_HINT, make_clients
    from builder.store import StoredImage

    image = StoredImage.load(image_dir)
    backing = backing or manifest.image.backing
    if backing not in BACKINGS:
        raise UserError(f"unknown backing {backing!r}", hint="ebs or instance-store")
    regions = regions or regions_for(manifest, None)
    clients = make_clients(target, max_pool_connections=max(16, concurrency))
    if clients is None:
        out.say(f"{NO_CREDENTIALS} ({image.dir}); {NO_CREDENTIALS_HINT}")
        return {"published": False, "reason": "no AWS credentials configured",
                "image_dir": str(image.dir), "backing": backing}
    if backing == "instance-store" and bundle is None:
        raise UserError("an instance-store publish needs the bundle certificates",
                        hint="pass --cert, --privatekey and --ec2cert")
    if backing == "instance-store" and manifest.image.backing != "instance-store":
        check_backing_override(manifest)
    options = bundle.options(manifest) if backing == "instance-store" and bundle else None
    ctx = PublishContext(
        clients=clients, out=out, image=image,
        ami_name=ami_name(manifest.image.name_template, image.name, image.version,
                          image.architecture),
        regions=regions, ssm_prefix=manifest.publish.ssm_prefix,
        kms_key_ids=dict(manifest.publish.kms_key_ids),
        upload_concurrency=concurrency, dry_run=dry_run,
    )
    try:
        if options is not None:
            doc = publish_instance_store(ctx, options)
        else:
            doc = publish(ctx)
            doc["backing"] = "ebs"
    except ClientError as exc:  # the steps' cleanups have run: say it in one line
        raise UserError(
            f"publishing {ctx.ami_name} failed: {exc}; what this run had created was removed",
            hint=f"fix the cause and publish again (build {ctx.build_id})",
        ) from exc
    doc["published"] = not dry_run
    return doc
