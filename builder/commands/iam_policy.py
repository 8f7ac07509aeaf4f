"""`amibake iam-policy [--publish] [--launch]`: the least-privilege IAM policy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "iam-policy", parents=[parent], help="print the IAM policy amibake needs",
        description="Prints an IAM policy document with exactly the actions the chosen "
        "commands call (both when neither flag is given).")
    p.add_argument("--publish", action="store_true", help="publish and amis deprecate|prune|gc")
    p.add_argument("--launch", action="store_true", help="launch --target aws")
    p.add_argument("--kms", action="store_true",
                   help="add the KMS permissions encrypted snapshots need (publish.kms_key_ids)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.iam_policy import policy_document

    both = not args.publish and not args.launch
    doc = policy_document(publish=args.publish or both, launch=args.launch or both,
                          kms=args.kms)
    out.result(doc, json.dumps(doc, indent=2))
    return 0
