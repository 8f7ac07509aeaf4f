"""`amibake stack template MANIFEST [--out FILE]`: the app as one CloudFormation stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "stack", parents=[parent], help="the whole app on AWS as one CloudFormation stack",
        description="template: write the CloudFormation template (YAML) of the manifest's "
                    "`stack:` section (VPC, security groups, instance profiles, launch "
                    "templates, Auto Scaling groups, load balancers, private names).")
    p.add_argument("action", choices=("template",))
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the template here (default: standard output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.atomic import write_atomically
    from builder.manifest import load_manifest
    from builder.stack.template import stack_name, template, template_yaml

    manifest = load_manifest(args.manifest)
    built = template(manifest)
    text = template_yaml(manifest, built)
    doc: dict[str, Any] = {"stack": stack_name(manifest), "resources": len(built["Resources"])}
    if args.out is None:
        if out.json_mode:
            doc["template"] = text
            out.result(doc)
        else:
            out.stdout.write(text)
            out.stdout.flush()
        return 0
    write_atomically(args.out, text)
    doc["path"] = str(args.out)
    out.result(doc, f"{args.out}: stack {doc['stack']}, {doc['resources']} resources")
    return 0
