"""`amibake validate [PATH ...]`: load, render every role, check with cloud-init's schema."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import builder
from builder.commands import VERBS
from builder.errors import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "validate", parents=[parent], help=VERBS["validate"],
        description="Load each manifest, render every role (fried and baked user-data) and "
        "check it with cloud-init 22.4.2's own schema and amibake's lints (literal secrets, "
        "EC2's 16384-byte limit, unknown keys). Every value is checked for where it goes "
        "(paths, units, nginx, postgresql.conf, shell), every section at once. render and "
        "bake run the same checks first. Exit 0 when clean, 1 on problems, 2 on "
        "usage errors.",
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="manifest files or directories (default: every manifest in manifests/)")
    p.set_defaults(func=run)


def manifest_paths(paths: list[Path]) -> list[Path]:
    """Files as given, directories expanded to their *.yaml / *.yml; missing → UserError."""
    if not paths:
        paths = [builder.MANIFESTS_DIR]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"no such manifest: {path}", hint="give a manifest file or directory")
    return found


def run(args: argparse.Namespace, out: Output) -> int:
    try:
        paths = manifest_paths(list(args.paths))
    except UserError as err:
        out.stderr.write(f"amibake validate: error: {err.message} (hint: {err.hint})\n")
        return EXIT_USAGE
    if not paths:
        out.stderr.write("amibake validate: error: no manifests found\n")
        return EXIT_USAGE
    from builder.validate.schema import cloudinit_version, keep_verdicts_on_disk

    keep_verdicts_on_disk()
    version = cloudinit_version()  # fails early, with its hint, when not set up
    from builder.bake.bakeable import render_only_reason
    from builder.validate.check import check_manifest

    reports = [check_manifest(p) for p in paths]
    problems = [pr for r in reports for pr in r.problems]
    render_only = {r.path: render_only_reason(r.manifest) for r in reports
                   if r.manifest is not None and not r.problems}
    notes = [f"{path}: render-only, `amibake bake` refuses it: {reason}"
             for path, reason in render_only.items() if reason]
    roles = sum(len(r.roles) for r in reports)
    summary = (
        f"{len(reports)} manifest(s), {roles} role(s): "
        + ("clean" if not problems else f"{len(problems)} problem(s)")
        + f" (cloud-init {version} schema)"
    )
    out.result(
        {
            "ok": not problems,
            "cloud_init": version,
            "manifests": [
                {"path": r.path, "name": r.name, "roles": r.roles,
                 "render_only": render_only.get(r.path)} for r in reports
            ],
            "problems": [
                {"file": p.location.file, "line": p.location.line, "col": p.location.col,
                 "message": p.message}
                for p in problems
            ],
        },
        text="\n".join([str(p) for p in problems] + notes + [summary]),
    )
    return EXIT_PROBLEMS if problems else EXIT_OK
