"""`amibake cutover plan|rehearse|notify|banner-on|banner-off|run|status|watch|finish|rollback
MANIFEST`:
move the live app."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "cutover", parents=[parent],
        help=VERBS["cutover"],
        description="Plan, rehearse, run, inspect or roll back the cutover described in the "
                    "manifest's `cutover` section. Secrets: AMIBAKE_SECRET_<NAME> overrides "
                    "the secret store for local runs.",
    )
    p.add_argument("action", choices=("plan", "rehearse", "notify", "banner-on", "banner-off",
                                      "run", "status", "watch", "finish", "rollback"))
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--dry-run", action="store_true",
                   help="print what each step (or notify, banner-on/off) would do; change nothing")
    p.add_argument("--once", action="store_true", help="watch: report once, do not wait")
    p.add_argument("--state", type=Path, help="state file (default: .amibake/ next to MANIFEST)")
    p.add_argument("--now", action="store_true",
                   help="start the window steps now, without waiting for window_start / old TTL")
    p.add_argument("--fix-replica-identity", action="store_true",
                   help="set REPLICA IDENTITY FULL on tables that have no primary key")
    p.add_argument("--from-stack", action="store_true",
                   help="take dns.new_address from the deployed stack's SiteAddress output "
                        "(`amibake stack deploy`): its Elastic IP, or its load balancer's "
                        "DNS name (the switch then writes a CNAME)")
    from builder.aws.clients import add_aws_options

    add_aws_options(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace, out: Output) -> int:
    from builder.aws.clients import Clients, make_session, target_from_args
    from builder.cutover import plan, procedure
    from builder.cutover.config import derive
    from builder.cutover.dns import provider_for
    from builder.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    region = manifest.publish.regions[0] if manifest.publish.regions else None
    target = target_from_args(args, default_region=region)
    # the one retry policy; clients are only called for secrets without an
    # AMIBAKE_SECRET_<NAME> override and for a route53 switch
    aws = Clients(make_session(target), home_region=target.region,
                  endpoint_url=target.endpoint_url)
    if args.from_stack:
        from builder.cutover.config import with_new_address
        from builder.stack.deploy import site_address
        from builder.stack.template import stack_name

        name = stack_name(manifest)
        site = site_address(aws.client("cloudformation"), name)
        manifest = with_new_address(manifest, site, f"stack {name}'s SiteAddress")
        out.say(f"dns.new_address: {site} (stack {name}'s SiteAddress)")
    cfg = derive(manifest, ssm=aws.client("ssm"), secretsmanager=aws.client("secretsmanager"))
    route53 = aws.client("route53") if cfg.cutover.dns.provider == "route53" else None
    dns = provider_for(cfg, route53=route53)
    path = args.state or procedure.default_state_path(cfg)

    if args.action == "plan":
        doc = procedure.plan_doc(cfg, dns, path)
        out.result(doc, plan.to_markdown(doc))
        return 0
    if args.action == "rehearse":
        from builder.cutover import rehearse

        doc = rehearse.rehearse(cfg, dns, say=out.say, save_to=rehearse.figures_path(path))
        out.result(doc, "\n".join(plan.rehearsal_lines(doc)))
        return 0
    if args.action == "status":
        doc = procedure.status_doc(cfg, path)
        out.result(doc, procedure.status_text(doc))
        return 0
    if args.action == "notify":  # at the notice time: the banner on the old site, the mail
        from builder.cutover import notify
        from builder.cutover.config import resolve_secret

        if args.dry_run:
            lines = notify.would(cfg)
            out.result({"would": lines}, "\n\n".join(lines))
            return 0
        mail = cfg.cutover.notice.mail
        password = (resolve_secret(mail.password, ssm=aws.client("ssm"),
                                   secretsmanager=aws.client("secretsmanager"))
                    if mail is not None and mail.password is not None else None)
        done = notify.notify(cfg, password=password)
        out.result({"notify": done}, "\n".join(done))
        return 0
    if args.action in ("banner-on", "banner-off"):  # the notice on the old site
        from builder.cutover import banner

        on = args.action == "banner-on"
        if args.dry_run:
            detail = (banner.banner_conf_text(cfg) if on else
                      f"would remove the notice banner from {cfg.cutover.old_site}")
        else:
            detail = banner.switch(cfg, on)
        out.result({"banner": detail}, detail)
        return 0
    if args.action == "watch":  # requests still reaching the old site
        from builder.cutover import watch

        doc = watch.watch(cfg, path, say=out.say, once=args.once)
        out.result(doc, watch.line(doc))
        return 0
    if args.action == "finish":  # after the watch period: the TTL raised back
        procedure.finish_cutover(cfg, dns, path, say=out.say)
        doc = procedure.status_doc(cfg, path)
        out.result(doc, procedure.status_text(doc))
        return 0
    if args.dry_run:
        rows = procedure.dry_run(cfg, dns, path, rollback=args.action == "rollback",
                                 start_now=args.now,
                                 fix_replica_identity=args.fix_replica_identity)
        out.result({"dry_run": rows},
                   "\n".join(f"{r['status']:8} {r['step']}: {r['would']}" for r in rows))
        return 0
    if args.action == "run":
        state = procedure.run_cutover(cfg, dns, path, say=out.say, start_now=args.now,
                                      fix_replica_identity=args.fix_replica_identity)
    else:
        state = procedure.rollback_cutover(cfg, dns, path, say=out.say)
    doc = procedure.status_doc(cfg, path)
    out.result(doc, procedure.status_text(doc))
    return 0 if state.complete or args.action == "rollback" else 1


