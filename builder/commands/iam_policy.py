"""`amibake iam-policy [--publish] [--launch] [--stack] [--kms]`: the least-privilege IAM
policy of amibake's commands; `--role ROLE MANIFEST`: the instance profile policy of a role."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "iam-policy", parents=[parent], help=VERBS["iam-policy"],
        description="Prints an IAM policy document with exactly the actions the chosen "
        "commands call (all of them when no command is chosen); with --role, the policy of "
        "the role's instance profile instead (the one `launch --target aws` and the stack "
        "template attach).")
    p.add_argument("--publish", action="store_true", help="publish and amis deprecate|prune|gc")
    p.add_argument("--launch", action="store_true", help="launch --target aws")
    p.add_argument("--stack", action="store_true",
                   help="stack plan|deploy|status|delete (amibake's own CloudFormation calls)")
    p.add_argument("--kms", action="store_true",
                   help="add the KMS permissions encrypted snapshots need (publish.kms_key_ids)")
    p.add_argument("--role", metavar="ROLE",
                   help="print the instance profile policy of ROLE of MANIFEST: its secrets, "
                        "the db role's backup prefix and data volume")
    p.add_argument("manifest", nargs="?", type=Path, metavar="MANIFEST",
                   help="the manifest (with --role)")
    p.add_argument("--region", default="*",
                   help="with --role: the region in the ARNs (default: any)")
    p.add_argument("--account", default="*",
                   help="with --role: the account id in the ARNs (default: any)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    if args.role is not None or args.manifest is not None:
        return _instance_policy(args, out)
    from builder.aws.iam_policy import policy_document

    every = not args.publish and not args.launch and not args.stack
    doc = policy_document(publish=args.publish or every, launch=args.launch or every,
                          stack=args.stack or every, kms=args.kms)
    out.result(doc, json.dumps(doc, indent=2))
    return 0


def _instance_policy(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.instance_policy import LiteralArns, role_policy_document
    from builder.manifest import load_manifest
    from builder.manifest.field_checks import region

    if args.role is None or args.manifest is None:
        raise UserError("--role and MANIFEST go together",
                        hint="amibake iam-policy --role db manifests/smallpayroll.yaml")
    if args.publish or args.launch or args.stack or args.kms:
        raise UserError("--role prints an instance profile's policy, not a command's",
                        hint="leave out --publish/--launch/--stack/--kms")
    if args.region != "*" and region(args.region) is not None:
        raise UserError(f"--region {args.region!r} is not an AWS region", hint="e.g. us-east-1")
    if args.account != "*" and not (args.account.isascii() and args.account.isdigit()
                                    and len(args.account) == 12):
        raise UserError(f"--account {args.account!r} is not a 12-digit account id")
    manifest = load_manifest(args.manifest)
    if args.role not in manifest.roles:
        raise UserError(f"no role {args.role!r} in {manifest.source}",
                        hint=f"roles: {', '.join(sorted(manifest.roles))}")
    doc = role_policy_document(manifest, args.role, LiteralArns(args.region, args.account))
    if doc is None:
        doc = {"Version": "2012-10-17", "Statement": []}
    out.result(doc, json.dumps(doc, indent=2))
    return 0
