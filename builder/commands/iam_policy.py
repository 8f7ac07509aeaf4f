"""`amibake iam-policy [--publish] [--launch] [--stack]`: the least-privilege IAM policy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "iam-policy", parents=[parent], help="print the IAM policy amibake needs",
        description="Prints an IAM policy document with exactly the actions the chosen "
        "commands call (all of them when no command is chosen).")
    p.add_argument("--publish", action="store_true", help="publish and amis deprecate|prune|gc")
    p.add_argument("--launch", action="store_true", help="launch --target aws")
    p.add_argument("--stack", action="store_true",
                   help="stack plan|deploy|status|delete (amibake's own CloudFormation calls)")
    p.add_argument("--kms", action="store_true",
                   help="add the KMS permissions encrypted snapshots need (publish.kms_key_ids)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.iam_policy import policy_document

    every = not args.publish and not args.launch and not args.stack
    doc = policy_document(publish=args.publish or every, launch=args.launch or every,
                          stack=args.stack or every, kms=args.kms)
    out.result(doc, json.dumps(doc, indent=2))
    return 0
