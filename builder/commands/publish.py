"""`amibake publish MANIFEST`: a stored image → registered, tagged AMIs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options

    p = subparsers.add_parser(
        "publish", parents=[parent], help="publish a stored image as AMIs",
        description="Upload a boot-tested image from the local store to an EBS snapshot, "
        "register it as an AMI, tag it, copy it to the manifest's regions and point SSM "
        "parameters at it. Re-publishing the same version and disk changes nothing.",
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--version", dest="image_version", metavar="V",
                   help="stored version to publish (default: the manifest's version)")
    p.add_argument("--images", "--store", dest="images", type=Path, default=None,
                   metavar="DIR", help="local image store (default: $AMIBAKE_STORE or images/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be created; create nothing")
    p.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="blocks uploaded at once (default: 8)")
    add_aws_options(p)
    p.set_defaults(func=run)


def regions_for(manifest: Any, override: str | None) -> tuple[str, ...]:
    regions = tuple(manifest.publish.regions)
    if override:
        regions = (override, *[r for r in regions if r != override])
    if not regions:
        raise UserError("publish.regions is empty", hint="list at least one region")
    return regions


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.clients import target_from_args
    from builder.manifest import load_manifest
    from builder.publish.context import find_stored_image

    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    manifest = load_manifest(Path(args.manifest))
    version = args.image_version or str(manifest.version)
    store_root = args.images or Path(os.environ.get("AMIBAKE_STORE") or "images")
    image = find_stored_image(store_root, manifest.name, version)
    regions = regions_for(manifest, getattr(args, "region", None))
    target = target_from_args(args, regions[0])
    doc = publish_stored_image(manifest, image.dir, target, out, regions=regions,
                               dry_run=args.dry_run, concurrency=args.concurrency)
    if not doc["published"] and not args.dry_run:
        text = f"not published: {doc['reason']}"
    elif args.dry_run:
        text = "\n".join(doc["plan"])
    elif doc["existing"]:
        text = "already published, nothing changed: " + ", ".join(
            f"{r} {i}" for r, i in doc["images"].items())
    else:
        text = "\n".join(f"{r}: {i}" for r, i in doc["images"].items())
    out.result(doc, text)
    return 0


def publish_stored_image(
    manifest: Any,
    image_dir: Path,
    target: Any,
    out: Output,
    *,
    regions: tuple[str, ...] | None = None,
    dry_run: bool = False,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Publish the stored image in `image_dir` (for `publish` and `bake --target aws`).

    `target` is a `builder.aws.clients.AwsTarget`. Without AWS credentials it
    says so and returns `{"published": False, ...}`: the image stays local.
    """
    from builder.aws.clients import NO_CREDENTIALS, NO_CREDENTIALS_HINT, make_clients
    from builder.publish.context import PublishContext, PublishImage, ami_name
    from builder.publish.ebs_steps import publish

    image = PublishImage.from_dir(image_dir)
    if manifest.image.backing != "ebs":
        raise UserError(
            f"image.backing is {manifest.image.backing!r}; this command publishes EBS-backed AMIs",
            hint="instance-store images are published from an S3 bundle",
        )
    regions = regions or regions_for(manifest, None)
    clients = make_clients(target, max_pool_connections=max(16, concurrency))
    if clients is None:
        out.say(f"{NO_CREDENTIALS} ({image.dir}); {NO_CREDENTIALS_HINT}")
        return {"published": False, "reason": "no AWS credentials configured",
                "image_dir": str(image.dir)}
    ctx = PublishContext(
        clients=clients, out=out, image=image,
        ami_name=ami_name(manifest.image.name_template, image.name, image.version,
                          image.architecture),
        regions=regions, ssm_prefix=manifest.publish.ssm_prefix,
        kms_key_ids=dict(manifest.publish.kms_key_ids),
        upload_concurrency=concurrency, dry_run=dry_run,
    )
    doc = publish(ctx)
    doc["published"] = not dry_run
    return doc
