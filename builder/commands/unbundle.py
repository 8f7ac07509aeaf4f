"""`amibake unbundle`: verify an EC2 bundle and reassemble its image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.commands.bundle import add_key_options

    p = subparsers.add_parser(
        "unbundle", parents=[parent], help=VERBS["unbundle"],
        description="Check the manifest's signature, every part's SHA-1 and the image "
        "digest, decrypt with your private key and write the image, byte for byte. "
        "EC2's private key decrypts a bundle too (as euca-unbundle -k), but only the "
        "bundler's --cert can check the signature then.",
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
    p.add_argument("--no-verify-signature", action="store_true",
                   help="with EC2's private key and no --cert: unbundle although the "
                   "manifest's signature cannot be checked (a warning says so)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.bundle.reader import unbundle
    from builder.commands.bundle import require

    result = unbundle(args.manifest, require(args.privatekey, "--privatekey"),
                      output=args.output, destination=args.destination, cert=args.cert,
                      parts_dir=args.source, trust_unsigned=args.no_verify_signature)
    if not result.signature_checked:  # shown with --json too: it is a warning, not progress
        print(f"amibake: warning: the signature of {args.manifest} was NOT checked (EC2's key"
              " cannot check it): the image is intact as the manifest describes it, but"
              " nothing shows who made the manifest", file=out.stderr, flush=True)
    out.result(
        {"image": str(result.image_path), "size": result.size, "digest": result.digest,
         "parts": result.parts, "verified": result.signature_checked},
        text=f"{'verified' if result.signature_checked else 'UNSIGNED, checked'}"
        f" {result.parts} parts; wrote {result.image_path} ({result.size} bytes)",
    )
    return 0
