"""`amibake upload-bundle`: a bundle's parts and manifest to S3 (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options
    from builder.commands.bundle import add_key_options

    p = subparsers.add_parser(
        "upload-bundle", parents=[parent], help=VERBS["upload-bundle"],
        description="Check the manifest's signature and every part (named <image>.part.N, "
        "a file beside the manifest), then upload the parts, then the manifest, to "
        "s3://BUCKET/PREFIX/. Nothing is sent unless all of that holds (each part's SHA-1 "
        "too). The bucket is created (public access blocked) if missing. "
        "Files already there with the same SHA-256 are skipped, so a failed upload resumes.",
    )
    p.add_argument("-m", "--manifest", type=Path, required=True, metavar="FILE",
                   help="<prefix>.manifest.xml (the parts are beside it)")
    add_key_options(p, ec2cert=False)  # the signature is checked before anything is sent
    p.add_argument("-b", "--bucket", required=True, metavar="BUCKET[/PREFIX]",
                   help="where the bundle goes")
    p.add_argument("--acl", default="aws-exec-read",
                   choices=("aws-exec-read", "bucket-owner-full-control", "none"),
                   help="canned ACL for the objects (default: aws-exec-read, which lets EC2 "
                   "read the bundle; none for buckets with ACLs disabled)")
    p.add_argument("--retry", type=int, default=5, metavar="N",
                   help="sends per request, retries included (default: 5)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="files uploaded at once (default: 4)")
    add_aws_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.clients import NO_CREDENTIALS_HINT, make_clients, target_from_args
    from builder.aws.retry import Retries, RetryPolicy
    from builder.bundle.reader import check_parts, part_paths, verified_manifest
    from builder.publish.bundle_upload import UploadSettings, upload_bundle

    if args.retry < 1 or args.concurrency < 1:
        raise UserError("--retry and --concurrency must be at least 1")
    # Before any client exists: a forged or altered manifest, a part name that
    # points anywhere but beside the manifest, or an altered part sends nothing.
    parsed = verified_manifest(args.manifest, cert=args.cert, privatekey=args.privatekey)
    check_parts(parsed, part_paths(parsed, args.manifest.parent), str(args.manifest))
    clients = make_clients(target_from_args(args),
                           retries=Retries(RetryPolicy(max_attempts=args.retry)))
    if clients is None:
        raise UserError("no AWS credentials configured: nothing was uploaded",
                        hint=NO_CREDENTIALS_HINT)
    settings = UploadSettings(workers=args.concurrency,
                              acl=None if args.acl == "none" else args.acl)
    result = upload_bundle(clients.s3(), args.manifest, args.bucket,
                           settings=settings, progress=out.say)
    out.result(
        {"image_location": result.image_location, "uploaded": list(result.uploaded),
         "skipped": list(result.skipped), "created_bucket": result.created_bucket},
        text=f"uploaded {len(result.uploaded)}, skipped {len(result.skipped)}; "
        f"ImageLocation {result.image_location}",
    )
    return 0
