"""`amibake schema`: the manifest settings reference (Markdown, or --json)."""

from __future__ import annotations

import argparse
from typing import Any

from builder.commands import VERBS
from builder.manifest.model import SCHEMA_VERSION
from builder.manifest.reference import as_json, markdown, sections
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "schema", parents=[parent],
        help=VERBS["schema"],
        description="Print the manifest settings reference, derived from the model "
                    "(one Markdown table per section; --json for the same as JSON).",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    secs = sections()
    data = {"schema_version": SCHEMA_VERSION, **as_json(secs)}
    out.result(data, text=markdown(secs))
    return 0
