"""`amibake deprecate NAME VERSION --at DATE`: schedule AMI deprecation everywhere."""

from __future__ import annotations

import argparse
from typing import Any

from builder.output import Output


def add_region_options(p: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options

    p.add_argument("--regions", metavar="R1,R2",
                   help="regions to act in (default: the manifest's, else --region)")
    p.add_argument("--manifest", metavar="PATH",
                   help="take regions and the SSM prefix from this manifest")
    add_aws_options(p)


def resolve(args: argparse.Namespace) -> tuple[Any, tuple[str, ...], str]:
    """(clients, regions, ssm_prefix) for a life-cycle verb; UserError without credentials."""
    from pathlib import Path

    from builder.aws.clients import (
        DEFAULT_REGION,
        NO_CREDENTIALS_HINT,
        make_clients,
        target_from_args,
    )
    from builder.errors import UserError

    regions: tuple[str, ...] = ()
    prefix = "/amibake"
    if args.manifest:
        from builder.manifest import load_manifest

        manifest = load_manifest(Path(args.manifest))
        regions = tuple(manifest.publish.regions)
        prefix = manifest.publish.ssm_prefix
    if args.regions:
        regions = tuple(r.strip() for r in args.regions.split(",") if r.strip())
    if not regions:
        regions = (args.region or DEFAULT_REGION,)
    clients = make_clients(target_from_args(args, regions[0]))
    if clients is None:
        raise UserError("no AWS credentials configured: nothing to do", hint=NO_CREDENTIALS_HINT)
    return clients, regions, prefix


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("deprecate", parents=[parent],
                              help="schedule deprecation of a published version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--at", required=True, metavar="DATE",
                   help="when (YYYY-MM-DD or ISO 8601, UTC unless an offset is given)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    add_region_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import deprecate, parse_when

    at = parse_when(args.at)
    clients, regions, _prefix = resolve(args)
    plan = deprecate(clients, regions, args.name, args.version, at, dry_run=args.dry_run)
    out.result({"dry_run": args.dry_run, "actions": plan.to_json()}, plan.text())
    return 0
