"""`amibake amis deprecate|prune|gc`: published AMIs in AWS (the local store is `images`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def _add_region_options(p: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options

    p.add_argument("--regions", metavar="R1,R2",
                   help="regions to act in (default: the manifest's, else --region)")
    p.add_argument("--manifest", metavar="PATH",
                   help="take regions and the SSM prefix from this manifest")
    p.add_argument("--dry-run", action="store_true",
                   help="print the actions only; change nothing")
    add_aws_options(p)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "amis", parents=[parent], help=VERBS["amis"],
        description="Published AMIs, their snapshots, bundles and SSM parameters in every "
        "region (the local image store is `amibake images`).")
    sub = p.add_subparsers(dest="amis_verb", metavar="ACTION", required=True)

    dep = sub.add_parser("deprecate", parents=[parent],
                         help="schedule deprecation of a published version")
    dep.add_argument("name", metavar="NAME")
    dep.add_argument("version", metavar="VERSION")
    dep.add_argument("--at", required=True, metavar="DATE",
                     help="when (YYYY-MM-DD or ISO 8601, UTC unless an offset is given)")
    _add_region_options(dep)
    dep.set_defaults(func=run_deprecate)

    prune = sub.add_parser(
        "prune", parents=[parent], help="remove old published versions in every region",
        description="Keep the newest N versions; never the one SSM latest points to, never "
        "one a running instance or a launch template uses.")
    prune.add_argument("name", metavar="NAME")
    prune.add_argument("--keep", type=int, default=3, metavar="N", help="versions to keep (3)")
    _add_region_options(prune)
    prune.set_defaults(func=run_prune)

    gc = sub.add_parser(
        "gc", parents=[parent], help="remove leftovers of crashed publish runs",
        description="Deletes AMIs and snapshots tagged with an amibake build id but never "
        "marked complete, older than --min-age.")
    gc.add_argument("--build-id", metavar="ID", help="only this run's leftovers")
    gc.add_argument("--min-age", type=float, default=60.0, metavar="MINUTES",
                    help="leave younger resources alone: a run may be in progress (60)")
    _add_region_options(gc)
    gc.set_defaults(func=run_gc)


def _resolve(args: argparse.Namespace) -> tuple[Any, tuple[str, ...], str]:
    """(clients, regions, ssm_prefix); a UserError without credentials."""
    from builder.aws.clients import (
        DEFAULT_REGION,
        NO_CREDENTIALS_HINT,
        make_clients,
        target_from_args,
    )

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


def _print(args: argparse.Namespace, out: Output, actions: Any) -> int:
    out.result({"dry_run": args.dry_run, "actions": actions.to_json()}, actions.text())
    return 0


def run_deprecate(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import deprecate, parse_when

    at = parse_when(args.at)
    clients, regions, _prefix = _resolve(args)
    return _print(args, out, deprecate(clients, regions, args.name, args.version, at,
                                       dry_run=args.dry_run))


def run_prune(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import prune

    clients, regions, prefix = _resolve(args)
    return _print(args, out, prune(clients, regions, args.name, args.keep, ssm_prefix=prefix,
                                   dry_run=args.dry_run))


def run_gc(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import gc

    clients, regions, _prefix = _resolve(args)
    return _print(args, out, gc(clients, regions, min_age_seconds=args.min_age * 60,
                                build_id=args.build_id, dry_run=args.dry_run))
