"""`amibake render PATH --role ROLE | --all-roles [--out DIR] [--baked]`: user-data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import EXIT_OK, EXIT_USAGE, UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "render", parents=[parent], help=VERBS["render"],
        description="Render the user-data that starts an instance in a role. Fried (default): "
        "packages, every file and the boot dispatcher, for a plain Debian cloud image. "
        "--baked: for an amibake image, only the role and per-instance bits. Without --out "
        "the user-data is printed (gzipped when over 16 KiB, as EC2 gets it; a terminal "
        "gets the uncompressed text).",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the manifest")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--role", help="the role to render")
    which.add_argument("--all-roles", action="store_true", help="every role (needs --out)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write <DIR>/<role>.user-data (and .txt when gzipped)")
    p.add_argument("--baked", action="store_true", help="user-data for a baked image")
    p.add_argument("--host", action="append", default=[], metavar="ROLE=ADDR[,ADDR]",
                   help="addresses of another role's instances (nginx upstream, database); "
                   "written to /etc/amibake/hosts.env")
    p.add_argument("--marker", action="append", default=[], metavar="KEY=VALUE",
                   help="add a `# amibake-KEY: VALUE` line, e.g. "
                   "secrets-endpoint=http://169.254.169.254/... for local VMs")
    p.set_defaults(func=run)


def parse_markers(values: list[str]) -> dict[str, str]:
    markers: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise UserError(f"--marker {value!r}: expected KEY=VALUE",
                            hint="e.g. --marker secrets-endpoint=http://10.0.2.2:8080")
        markers[key.removeprefix("amibake-")] = text
    return markers


def parse_hosts(values: list[str]) -> dict[str, tuple[str, ...]]:
    hosts: dict[str, tuple[str, ...]] = {}
    for value in values:
        role, sep, addresses = value.partition("=")
        if not sep or not role or not addresses:
            raise UserError(f"--host {value!r}: expected ROLE=ADDR[,ADDR]",
                            hint="e.g. --host app=10.0.1.5,10.0.1.6")
        hosts[role] = hosts.get(role, ()) + tuple(a for a in addresses.split(",") if a)
    return hosts


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.render import render_role
    from builder.validate.check import load_checked

    if args.all_roles and args.out is None:
        out.stderr.write("amibake render: error: --all-roles needs --out DIR\n")
        return EXIT_USAGE
    if not args.path.is_file():
        out.stderr.write(f"amibake render: error: no such manifest: {args.path}\n")
        return EXIT_USAGE
    hosts = parse_hosts(args.host)
    manifest = load_checked(args.path)  # the checks `amibake validate` runs
    roles = list(manifest.roles) if args.all_roles else [args.role]
    markers = parse_markers(args.marker)
    rendered = [
        render_role(manifest, r, baked=args.baked, hosts=hosts, markers=markers) for r in roles
    ]
    if args.out is None:
        (one,) = rendered
        if out.json_mode:
            out.result(_describe(one, files=[]) | {"user_data": one.raw.decode()})
            return EXIT_OK
        stream = sys.stdout.buffer if out.stdout is sys.stdout else None
        data = one.raw if (one.gzipped and out.stdout.isatty()) else one.user_data
        if stream is not None:
            stream.write(data)
            stream.flush()
        else:
            out.stdout.write(one.raw.decode())
        return EXIT_OK
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    suffix = ".baked" if args.baked else ""
    for one in rendered:
        target = args.out / f"{one.role}{suffix}.user-data"
        target.write_bytes(one.user_data)
        files = [str(target)]
        if one.gzipped:
            text = args.out / f"{one.role}{suffix}.user-data.txt"
            text.write_bytes(one.raw)
            files.append(str(text))
        results.append(_describe(one, files))
    out.result(
        {"manifest": str(args.path), "roles": results},
        text="\n".join(
            f"{r['role']}: {r['files'][0]} ({r['bytes']} bytes"
            + (", gzipped" if r["gzipped"] else "") + ")"
            for r in results
        ),
    )
    return EXIT_OK


def _describe(one: Any, files: list[str]) -> dict[str, Any]:
    return {
        "role": one.role,
        "baked": one.baked,
        "bytes": len(one.user_data),
        "raw_bytes": len(one.raw),
        "gzipped": one.gzipped,
        "files": files,
    }
