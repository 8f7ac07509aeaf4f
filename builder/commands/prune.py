"""`amibake prune NAME --keep N`: deregister old versions and delete their snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from builder.commands.deprecate import add_region_options, resolve
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "prune", parents=[parent], help="remove old published versions in every region",
        description="Keep the newest N versions; never the one SSM latest points to, never "
        "one a running instance or a launch template uses.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--keep", type=int, default=3, metavar="N", help="versions to keep (3)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    add_region_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import prune

    clients, regions, prefix = resolve(args)
    plan = prune(clients, regions, args.name, args.keep, ssm_prefix=prefix, dry_run=args.dry_run)
    out.result({"dry_run": args.dry_run, "actions": plan.to_json()}, plan.text())
    return 0
