"""`amibake gc`: remove AMIs and snapshots left by publish runs that crashed."""

from __future__ import annotations

import argparse
from typing import Any

from builder.commands.deprecate import add_region_options, resolve
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "gc", parents=[parent], help="remove leftovers of crashed publish runs",
        description="Deletes AMIs and snapshots tagged with an amibake build id but never "
        "marked complete, older than --min-age.")
    p.add_argument("--build-id", metavar="ID", help="only this run's leftovers")
    p.add_argument("--min-age", type=float, default=60.0, metavar="MINUTES",
                   help="leave younger resources alone: a run may be in progress (60)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    add_region_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.publish.lifecycle import gc

    clients, regions, _prefix = resolve(args)
    plan = gc(clients, regions, min_age_seconds=args.min_age * 60, build_id=args.build_id,
              dry_run=args.dry_run)
    out.result({"dry_run": args.dry_run, "actions": plan.to_json()}, plan.text())
    return 0
