"""`amibake instances list|stop`: the local instances `amibake launch` started."""

from __future__ import annotations

import argparse
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "instances", parents=[parent], help=VERBS["instances"],
        description="Local instances started by `amibake launch --target local`.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[parent], help="list local instances")
    ls.set_defaults(func=run_list)
    stop = sub.add_parser("stop", parents=[parent], help="stop local instances")
    stop.add_argument("instance_ids", nargs="*", metavar="ID", help="instance ids")
    stop.add_argument("--all", action="store_true", help="stop every local instance")
    stop.set_defaults(func=run_stop)
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace, out: Output) -> int:
    from builder.vm.launch import list_instances

    found = list_instances()
    lines = [f"{'INSTANCE':<20} {'ROLE':<12} {'STATE':<8} {'SSH':>6} {'HTTP':>6}  IMAGE"]
    lines += [f"{i.instance_id:<20} {i.role:<12} {'running' if i.running else 'exited':<8} "
              f"{i.ssh_port:>6} {i.http_port:>6}  {i.image}" for i in found]
    out.result({"instances": [i.as_json() for i in found]},
               "\n".join(lines) if found else "no local instances")
    return 0


def run_stop(args: argparse.Namespace, out: Output) -> int:
    from builder.vm.launch import list_instances, stop_instance

    ids = list(args.instance_ids)
    if args.all:
        ids += [i.instance_id for i in list_instances() if i.instance_id not in ids]
    elif not ids:
        raise UserError("name the instances to stop, or pass --all",
                        hint="`amibake instances list` shows them")
    stopped = [stop_instance(i) for i in ids]
    out.result({"stopped": [i.instance_id for i in stopped]},
               "\n".join(f"stopped {i.instance_id} ({i.role})" for i in stopped)
               or "nothing to stop")
    return 0
