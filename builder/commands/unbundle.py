"""`amibake unbundle`: verify an EC2 bundle and reassemble its image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.commands.bundle import add_key_options

    p = subparsers.add_parser(
        "unbundle", parents=[parent], help="verify a bundle and reassemble its image",
        description="Check the manifest's signature, every part's SHA-1 and the image "
        "digest, decrypt with your private key and write the image, byte for byte.",
    )
    p.add_argument("-m", "--manifest", type=Path, required=True, metavar="FILE",
                   help="<prefix>.manifest.xml")
    add_key_options(p, ec2cert=False)
    where = p.add_mutually_exclusive_group()
    where.add_argument("-d", "--destination", type=Path, metavar="DIR",
                       help="directory for the image, named as in the manifest (default: .)")
    where.add_argument("-o", "--output", type=Path, metavar="FILE", help="the image file")
    p.add_argument("-s", "--source", type=Path, metavar="DIR",
                   help="directory holding the parts (default: the manifest's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.bundle.reader import unbundle
    from builder.commands.bundle import require

    result = unbundle(args.manifest, require(args.privatekey, "--privatekey"),
                      output=args.output, destination=args.destination, cert=args.cert,
                      parts_dir=args.source)
    out.result(
        {"image": str(result.image_path), "size": result.size, "digest": result.digest,
         "parts": result.parts, "verified": True},
        text=f"verified {result.parts} parts; wrote {result.image_path} ({result.size} bytes)",
    )
    return 0
