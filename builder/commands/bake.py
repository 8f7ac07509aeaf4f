"""`amibake bake MANIFEST`: a tested, versioned image in the local store."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "bake", parents=[parent], help=VERBS["bake"],
        description="Build the image's root filesystem (cached layers), write a bootable "
        "GPT disk (UEFI and BIOS), boot-test it in every role, and keep it in the local "
        "store as images/NAME/VERSION/. An unchanged manifest is a no-op.",
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--target", choices=("local", "aws"), default="local",
                   help="local: store only; aws: store, then publish as AMIs")
    p.add_argument("--roles", metavar="R1,R2",
                   help="roles baked in (default: image.roles, else every role)")
    p.add_argument("--bump", choices=("patch", "minor", "major"),
                   help="bake the next version and write it back into the manifest")
    p.add_argument("--force", action="store_true",
                   help="rebuild a stored version even though its inputs changed")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="layer cache (default: $AMIBAKE_CACHE_DIR or ~/.cache/amibake)")
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="local image store (default: $AMIBAKE_STORE or ./images)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="bake an app.code path that is a git checkout with uncommitted "
                        "changes (image.json records dirty: true)")
    p.add_argument("--skip-boot-test", action="store_true",
                   help="store the image without booting it (not for images you publish)")
    try:
        from builder.aws.clients import add_aws_options
        from builder.commands.publish import add_backing_options
    except ImportError:  # publishing not installed: --target aws says so
        pass
    else:
        add_backing_options(p)
        add_aws_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.bake.bakeable import check_bakeable
    from builder.bake.cache import default_cache_dir
    from builder.bake.pipeline import BakeOptions, bake, with_roles
    from builder.manifest import bump_version, load_manifest
    from builder.manifest.bump import next_version
    from builder.store import default_store_root
    from builder.validate.check import load_checked
    from builder.validate.schema import keep_verdicts_on_disk

    # cloud-init's verdicts as `validate` keeps them (keyed by the document's
    # bytes and the judge's code): an unchanged bake never imports cloud-init
    keep_verdicts_on_disk()
    loaded = load_manifest(args.manifest)
    check_bakeable(loaded)  # at once: before any rendering
    manifest = load_checked(args.manifest, loaded)  # the checks `amibake validate` runs
    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else None
    manifest = with_roles(manifest, roles)
    if args.bump:
        manifest = dataclasses.replace(manifest, version=next_version(manifest.version, args.bump))
    options = BakeOptions(
        store_root=args.store or default_store_root(),
        cache_dir=args.cache_dir or default_cache_dir(),
        force=args.force,
        skip_boot_test=args.skip_boot_test,
        allow_dirty=args.allow_dirty,
    )
    result = bake(manifest, options, out.say)
    if args.bump:
        written = bump_version(args.manifest, args.bump)
        if written != manifest.version:
            raise UserError(
                f"{args.manifest} changed during the bake: wrote version {written}, "
                f"baked {manifest.version}",
            )
        out.say(f"{args.manifest}: version is now {written}")
    image = result.image
    doc: dict[str, Any] = {
        "action": result.action,
        "name": image.name,
        "version": image.version,
        "id": image.id,
        "path": str(image.dir),
        "disk": str(image.disk_path),
        "disk_digest": image.disk.digest,
        "apparent_size": image.disk.apparent_size,
        "used_size": image.disk.used_size,
        "roles": list(image.roles),
        "inputs_digest": image.inputs_digest,
        "base_layer_cached": result.base_cached,
        "app_layer_cached": result.app_cached,
        "app": image.app,
        "boot_test": "skipped" if image.boot_test.get("skipped") else "passed",
        "seconds": result.seconds,
    }
    if args.target == "aws":
        doc["publish"] = publish(args, manifest, image.dir, out)
    verb = {"unchanged": "unchanged, already stored", "built": "baked",
            "replaced": "rebaked (--force)"}[result.action]
    lines = [
        f"{verb}: {image.name} {image.version}",
        f"name:    {image.name}",
        f"version: {image.version}",
        f"id:      {image.id}",
        f"path:    {image.dir}",
        f"disk:    {image.disk_path} ({image.disk.apparent_size / 2**30:g} GiB, "
        f"{image.disk.used_size / 2**20:.0f} MiB used)",
    ]
    if image.boot_test.get("skipped"):
        lines.append("boot test: SKIPPED (--skip-boot-test)")
    if "publish" in doc:
        lines.append(f"publish: {json.dumps(doc['publish'], sort_keys=True)}")
    out.result(doc, "\n".join(lines))
    return 0


def publish(args: argparse.Namespace, manifest: Any, image_dir: Path,
            out: Output) -> dict[str, Any]:
    """--target aws: the one call into the publisher (builder.commands.publish)."""
    try:
        from builder.aws.clients import target_from_args
        from builder.commands.publish import bundle_args
        from builder.publish.run import publish_stored_image, regions_for
    except ImportError as exc:
        raise UserError(
            "--target aws: publishing is not available in this amibake",
            hint="bake with --target local, then publish with `amibake publish`",
        ) from exc
    regions = regions_for(manifest, getattr(args, "region", None))
    result: dict[str, Any] = publish_stored_image(
        manifest, image_dir, target_from_args(args, regions[0]), out, regions=regions,
        backing=getattr(args, "backing", None), bundle=bundle_args(args))
    return result
