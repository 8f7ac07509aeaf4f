"""`amibake bundle`: an image (stored, a disk file, or a live tree) → EC2 bundle."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def add_key_options(p: argparse.ArgumentParser, *, ec2cert: bool = True) -> None:
    """--cert / --privatekey (/ --ec2cert), defaulting like the AMI tools' env."""
    g = p.add_argument_group("certificates")
    g.add_argument("-c", "--cert", type=Path, default=_env_path("EC2_CERT"), metavar="PEM",
                   help="your X.509 certificate (default: $EC2_CERT)")
    g.add_argument("-k", "--privatekey", type=Path, default=_env_path("EC2_PRIVATE_KEY"),
                   metavar="PEM", help="its private key (default: $EC2_PRIVATE_KEY)")
    if ec2cert:
        g.add_argument("--ec2cert", type=Path, default=_env_path("EC2_BUNDLE_CERT"),
                       metavar="PEM",
                       help="EC2's bundling certificate for the region (default: "
                       "$EC2_BUNDLE_CERT)")


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value) if value else None


def require(value: Any, option: str) -> Any:
    if value is None:
        raise UserError(f"{option} is required", hint=f"pass {option}")
    return value


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "bundle", parents=[parent], help=VERBS["bundle"],
        description="Bundle an image for an instance-store AMI: tar, gzip (in parallel), "
        "AES-128-CBC with a fresh key, 10 MiB parts and a signed <prefix>.manifest.xml "
        "(format 2007-10-10, as ec2-bundle-image / ec2-bundle-vol).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", metavar="NAME[:VERSION]",
                     help="a stored image (newest version unless given, or img-<id>)")
    src.add_argument("--disk", type=Path, metavar="PATH", help="a disk image file")
    src.add_argument("--volume", type=Path, metavar="DIR",
                     help="a directory tree, e.g. / for the running system (made into ext4)")
    add_key_options(p)
    p.add_argument("-u", "--user", default=os.environ.get("EC2_USER_ID"), metavar="ACCOUNT",
                   help="your 12-digit AWS account id (default: $EC2_USER_ID)")
    p.add_argument("-p", "--prefix", help="bundle file name prefix (default: from the image)")
    p.add_argument("-d", "--destination", type=Path, metavar="DIR",
                   help="where the parts and manifest go (default: ./bundles/<prefix>)")
    p.add_argument("-r", "--arch", choices=("x86_64", "i386", "arm64"),
                   help="architecture (default: the stored image's, else x86_64)")
    p.add_argument("-B", "--block-device-mapping", metavar="VIRTUAL=DEVICE,...",
                   help="manifest block device mapping (default: ami=sda1,root=/dev/sda1)")
    p.add_argument("-e", "--exclude", action="append", default=[], metavar="PATH[,PATH]",
                   help="--volume: paths or rsync patterns to leave out (repeatable)")
    p.add_argument("--no-filter", action="store_true",
                   help="--volume: keep password hashes, keys, credentials, histories, "
                   "logs and cloud-init's instance data (left out by default)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be bundled (with --volume: every rule of what is "
                   "left out) and write nothing")
    p.add_argument("-s", "--size", type=int, default=0, metavar="MiB",
                   help="--volume: filesystem size (default: the tree's size + headroom)")
    p.add_argument("--images", "--store", dest="images", type=Path, default=None,
                   metavar="DIR", help="local image store (default: $AMIBAKE_STORE or ./images)")
    p.set_defaults(func=run)


def parse_mapping(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        virtual, sep, device = item.partition("=")
        if not sep or not virtual.strip() or not device.strip():
            raise UserError(f"bad block device mapping {item!r}", hint="VIRTUAL=DEVICE,...")
        mapping[virtual.strip()] = device.strip()
    return mapping


def resolve_stored(store: Any, ref: str) -> Any:
    """The stored image `ref` names; a path or a bad version is one line, not a traceback."""
    from packaging.version import InvalidVersion

    name, _, version = ref.replace("/", ":").partition(":")
    if not name or ref.startswith((".", "~")) or ref.count("/") + ref.count(":") > 1:
        raise UserError(f"--image {ref!r} is not a stored image NAME[:VERSION]",
                        hint="for a disk image file use --disk PATH")
    try:
        return store.resolve(ref)
    except InvalidVersion:
        raise UserError(f"--image {ref!r}: {version!r} is not a version",
                        hint="NAME, NAME:VERSION (e.g. smallpayroll:1.2.0) or img-<id>;"
                        " for a disk image file use --disk PATH") from None


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.bundle.certs import BundleCredentials
    from builder.bundle.volume import (
        VolumeRequest,
        filter_rules,
        make_volume_image,
        parse_excludes,
    )
    from builder.bundle.writer import BundleRequest, bundle_image, check_prefix, check_user

    if not args.volume and (args.exclude or args.no_filter or args.size):
        raise UserError("--exclude, --no-filter and --size go with --volume")
    arch = args.arch or ""
    transient: Path | None = None
    if args.image:
        from builder.store import Store, default_store_root

        stored = resolve_stored(Store(args.images or default_store_root()), args.image)
        disk, prefix = stored.disk_path, f"{stored.name}-{stored.version}"
        arch = arch or stored.architecture
    elif args.disk:
        disk, prefix = Path(args.disk), Path(args.disk).name
    else:
        prefix = "image"
    prefix = check_prefix(args.prefix or prefix)
    destination = args.destination or Path("bundles") / prefix
    volume = None
    if args.volume:
        disk = destination / prefix
        volume = VolumeRequest(source=args.volume, image=disk,
                               excludes=parse_excludes(args.exclude), size_mib=args.size,
                               filter_sensitive=not args.no_filter)
    if args.dry_run:
        rules = filter_rules(Path(args.volume), volume) if volume else []
        out.result(
            {"dry_run": True, "source": str(args.volume or disk), "prefix": prefix,
             "destination": str(destination),
             "filters": [{"rule": "include" if r == "+" else "exclude", "pattern": p}
                          for r, p in rules]},
            text="\n".join([f"would bundle {args.volume or disk} as {prefix} into {destination}",
                            *(f"  {'keep' if r == '+' else 'leave out'} {p}"
                              for r, p in rules)]),
        )
        return 0
    creds = BundleCredentials.load(require(args.cert, "--cert"),
                                   require(args.privatekey, "--privatekey"),
                                   require(args.ec2cert, "--ec2cert"))
    user = check_user(require(args.user, "--user"))
    if volume is not None:
        transient = disk
        out.say(f"imaging {args.volume} into {disk} ...")
        make_volume_image(volume)
    request = BundleRequest(image=disk, destination=destination, prefix=prefix, user=user,
                            architecture=arch or "x86_64")
    mapping = parse_mapping(args.block_device_mapping)
    if mapping is not None:
        request = dataclasses.replace(request, block_device_mapping=mapping)
    out.say(f"bundling {disk} as {prefix} into {destination} ...")
    try:
        result = bundle_image(request, creds)
    finally:
        if transient is not None:
            transient.unlink(missing_ok=True)
    m = result.manifest
    out.result(
        {"manifest": str(result.manifest_path), "parts": [str(p) for p in result.part_paths],
         "size": m.size, "bundled_size": m.bundled_size, "digest": m.digest, "prefix": prefix},
        text=f"wrote {len(result.part_paths)} parts and manifest {result.manifest_path}",
    )
    return 0
