"""`amibake publish MANIFEST`: a stored image → registered, tagged AMIs.

Arguments and printing only; the run is builder/publish/run.py (`bake --target
aws` calls it through `publish_stored_image` too)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.manifest.model import BACKINGS
from builder.output import Output

__all__ = ["BundleArgs", "add_backing_options", "bundle_args", "register", "run"]


@dataclass(frozen=True)
class BundleArgs:
    """The instance-store options as given (each may be missing until needed)."""

    cert: Path | None = None
    privatekey: Path | None = None
    ec2cert: Path | None = None
    bucket: str | None = None  # BUCKET[/PREFIX]; default: the manifest's publish.bucket
    workdir: Path | None = None

    def options(self, manifest: Any) -> Any:
        """`InstanceStoreOptions` for an instance-store publish; a UserError names
        the first thing missing."""
        from builder.commands.bundle import require
        from builder.publish.context import InstanceStoreOptions

        bucket = self.bucket or manifest.publish.bucket
        if not bucket:
            raise UserError(
                "an instance-store publish needs an S3 bucket for the bundle",
                hint="set publish.bucket in the manifest or pass --bucket BUCKET[/PREFIX]",
            )
        return InstanceStoreOptions(
            cert=require(self.cert, "--cert"), privatekey=require(self.privatekey, "--privatekey"),
            ec2cert=require(self.ec2cert, "--ec2cert"), bucket=bucket, workdir=self.workdir,
        )


def add_backing_options(p: argparse.ArgumentParser) -> None:
    """--backing, --bucket, --bundle-dir and the bundle key options (publish and bake)."""
    from builder.commands.bundle import add_key_options

    g = p.add_argument_group("instance-store backing")
    g.add_argument("--backing", choices=BACKINGS, default=None,
                   help="AMI root device type (default: the manifest's image.backing)")
    g.add_argument("--bucket", metavar="BUCKET[/PREFIX]", default=None,
                   help="S3 bucket for instance-store bundles (default: publish.bucket)")
    g.add_argument("--bundle-dir", type=Path, default=None, metavar="DIR",
                   help="where the transient bundle is written (default: a temp dir)")
    add_key_options(p)


def bundle_args(args: argparse.Namespace) -> BundleArgs:
    return BundleArgs(
        cert=getattr(args, "cert", None), privatekey=getattr(args, "privatekey", None),
        ec2cert=getattr(args, "ec2cert", None), bucket=getattr(args, "bucket", None),
        workdir=getattr(args, "bundle_dir", None),
    )


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options

    p = subparsers.add_parser(
        "publish", parents=[parent], help=VERBS["publish"],
        description="Upload a boot-tested image from the local store to an EBS snapshot "
        "(or, with backing instance-store, bundle it into S3), register it as an AMI, tag it, "
        "copy it to the manifest's regions and point SSM parameters at it. Re-publishing the "
        "same version and disk changes nothing.",
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
    add_backing_options(p)
    add_aws_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.clients import target_from_args
    from builder.manifest import load_manifest
    from builder.publish.run import publish_stored_image, regions_for
    from builder.store import Store, default_store_root

    if args.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    manifest = load_manifest(Path(args.manifest))
    version = args.image_version or str(manifest.version)
    store_root = args.images or default_store_root()
    image = Store(store_root).get(manifest.name, version)
    regions = regions_for(manifest, getattr(args, "region", None))
    target = target_from_args(args, regions[0])
    doc = publish_stored_image(manifest, image.dir, target, out, regions=regions,
                               dry_run=args.dry_run, concurrency=args.concurrency,
                               backing=getattr(args, "backing", None),
                               bundle=bundle_args(args))
    if not doc["published"] and not args.dry_run:
        text = f"not published: {doc['reason']}"
    elif args.dry_run:
        text = "\n".join(doc["actions"])
    elif doc["existing"]:
        text = "already published, nothing changed: " + ", ".join(
            f"{r} {i}" for r, i in doc["images"].items())
    else:
        text = "\n".join(f"{r}: {i}" for r, i in doc["images"].items())
    out.result(doc, text)
    return 0
