"""`amibake stack template|plan|deploy|status|delete MANIFEST`: the app as one
CloudFormation stack, driven through change sets.

Arguments and printing only; the template is builder/stack/template.py, the change sets
builder/stack/changeset.py, execution, deletion and status builder/stack/deploy.py."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output

ACTIONS = ("template", "plan", "deploy", "status", "delete")


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    from builder.aws.clients import add_aws_options

    p = subparsers.add_parser(
        "stack", parents=[parent], help=VERBS["stack"],
        description="template: write the CloudFormation template (YAML) of the manifest's "
                    "`stack:` section (VPC, security groups, instance profiles, launch "
                    "templates, Auto Scaling groups, load balancers, private names). "
                    "plan: create a change set and print what it adds, modifies and "
                    "replaces. deploy: execute it (or a new one), wait, print the outputs. "
                    "status: the stack's state, outputs and last events. delete: delete "
                    "the stack (asks first; the backup bucket is not part of it).")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="template: write the template here (default: standard output)")
    p.add_argument("--discard", action="store_true",
                   help="plan: delete the change set after printing it")
    p.add_argument("--yes", action="store_true",
                   help="delete: do not ask (needed without a terminal)")
    add_aws_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if args.action == "template":
        return _template(args, manifest, out)
    if args.out is not None:
        raise UserError("--out is for `stack template` only")
    if args.discard and args.action != "plan":
        raise UserError("--discard is for `stack plan` only")
    from builder.stack.template import stack_name

    name = stack_name(manifest)  # a manifest without `stack:` stops here, before AWS
    if args.action == "delete":
        _confirm(args, name)
    clients = clients_for(args, manifest)
    cfn = clients.client("cloudformation")
    if args.action == "plan":
        return _plan(args, manifest, cfn, out)
    if args.action == "deploy":
        return _deploy(manifest, clients, out)
    if args.action == "status":
        from builder.stack.deploy import status

        st = status(cfn, name)
        out.result(st.as_json(), "\n".join([st.text(),
                                             *_site_note(st.outputs.get("SiteAddress"))]))
        return 0 if st.status else 1
    from builder.stack.deploy import delete

    deleted = delete(cfn, name, say=out.say, sleep=time.sleep)
    out.result({"stack": name, "deleted": deleted},
               f"stack {name} deleted" if deleted else f"stack {name} does not exist")
    return 0


def clients_for(args: argparse.Namespace, manifest: Any) -> Any:
    """The AWS clients (the one retry policy) for --profile/--region/--endpoint-url."""
    from builder.aws.clients import NO_CREDENTIALS_HINT, make_clients, target_from_args

    clients = make_clients(target_from_args(args, manifest.publish.regions[0]))
    if clients is None:
        raise UserError("no AWS credentials configured: nothing was sent to AWS",
                        hint=NO_CREDENTIALS_HINT)
    return clients


def _confirm(args: argparse.Namespace, name: str) -> None:
    """Ask for the stack's name on a terminal; without one, only --yes deletes."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"not deleting stack {name} without confirmation",
                        hint="run it in a terminal, or pass --yes")
    print(f"delete stack {name} and every resource it created (instances, load balancers, "
          f"the VPC it made)? type its name to confirm: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip() != name:
        raise UserError(f"not deleting stack {name}: the name typed does not match")


def _body(manifest: Any) -> str:
    from builder.stack.template import template_yaml

    return template_yaml(manifest)


def _description(manifest: Any) -> str:
    return f"amibake {manifest.name} {manifest.version} ({manifest.source.name})"


def _plan(args: argparse.Namespace, manifest: Any, cfn: Any, out: Output) -> int:
    from builder.stack.changeset import discard, plan
    from builder.stack.template import stack_name

    p = plan(cfn, stack_name(manifest), _body(manifest), description=_description(manifest),
             sleep=time.sleep)
    doc = p.as_json()
    text = p.text()
    if args.discard:
        discard(cfn, p)
        doc["discarded"] = True
        text += "\n(change set discarded)" if p.change_set else ""
    elif p.change_set:
        text += f"\ndeploy it with: amibake stack deploy {args.manifest}"
    out.result(doc, text)
    return 0


def _deploy(manifest: Any, clients: Any, out: Output) -> int:
    from builder.stack.changeset import plan
    from builder.stack.deploy import execute, outputs
    from builder.stack.template import stack_name

    cfn = clients.client("cloudformation")
    name = stack_name(manifest)
    p = plan(cfn, name, _body(manifest), description=_description(manifest),
             sleep=time.sleep)
    if not p.change_set:
        from builder.stack.changeset import describe_stack

        current = describe_stack(cfn, name) or {}
        _roll(clients, name, out)  # a refresh that rolled back is tried again
        found = outputs(current)
        out.result({"stack": name, "changed": False, "outputs": found},
                   "\n".join([f"stack {name}: up to date, nothing to deploy",
                              *(f"  {k}: {v}" for k, v in sorted(found.items()))]))
        return 0
    out.say(p.text())
    stack = execute(cfn, p, say=out.say, sleep=time.sleep)
    _roll(clients, name, out)
    found = outputs(stack)
    out.result({"stack": name, "changed": True, "status": stack["StackStatus"],
                "outputs": found},
               "\n".join([f"stack {name}: {stack['StackStatus']}",
                          *(f"  {k}: {v}" for k, v in sorted(found.items())),
                          *_site_note(found.get("SiteAddress"))]))
    return 0


def _site_note(address: str | None) -> list[str]:
    """The line the cutover takes: `SiteAddress` is `cutover.dns.new_address` as it is,
    an Elastic IP (an A record) or the load balancer's DNS name (the switch writes a
    CNAME to it)."""
    if not address:
        return []
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [f"cutover.dns.new_address: {address}",
                "(SiteAddress is a DNS name: point the site's record at it with a CNAME — "
                "the cutover's switch writes one; the zone's apex needs a Route 53 alias, "
                "by hand)"]
    return [f"cutover.dns.new_address: {address}",
            "(SiteAddress is an Elastic IP: the cutover's switch writes an A record)"]


def _roll(clients: Any, name: str, out: Output) -> None:
    """Instance refresh of every group whose instances run an older launch template version
    (builder/stack/refresh.py); a failed one has rolled back and stops here."""
    from builder.stack.refresh import pending, roll, stack_groups

    asg, ec2 = clients.client("autoscaling"), clients.client("ec2")
    for r in pending(asg, ec2, stack_groups(clients.client("cloudformation"), name)):
        roll(asg, ec2, r, say=out.say, sleep=time.sleep)


def _template(args: argparse.Namespace, manifest: Any, out: Output) -> int:
    from builder.atomic import write_atomically
    from builder.stack.template import stack_name, template, template_yaml

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
