"""`amibake db backups|verify|restore MANIFEST`: the db role's backups in S3."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "db", parents=[parent],
        help=VERBS["db"],
        description="Work with the repository of components.postgresql.backup from this "
                    "machine. AWS credentials come from boto3's chain; the repository "
                    "passphrase from its secret store or AMIBAKE_SECRET_<NAME>.",
    )
    p.add_argument("action", choices=("backups", "verify", "restore"),
                   help="backups: list them; verify: restore the latest into a scratch "
                        "cluster and check it; restore: point-in-time restore into --pgdata")
    p.add_argument("manifest", type=Path, metavar="MANIFEST")
    p.add_argument("--to", default="latest", metavar="TIME|LABEL",
                   help="restore: `latest` (default), a backup label, or an ISO 8601 time "
                        "with offset")
    p.add_argument("--pgdata", type=Path, metavar="DIR",
                   help="restore: a new or empty data directory")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace, out: Output) -> int:
    from builder.db.repo import open_repo
    from builder.db.restore import parse_target, restore, verify
    from builder.errors import UserError
    from builder.manifest import load_manifest

    if args.action == "restore" and args.pgdata is None:
        raise UserError("amibake db restore needs --pgdata DIR",
                        hint="a new or empty directory for the restored cluster")
    target = parse_target(args.to) if args.action == "restore" else None
    manifest = load_manifest(args.manifest)
    with open_repo(manifest) as repo:
        if args.action == "backups":
            info = repo.info()
            doc = {"repository": info.url, "stanza": info.stanza,
                   "wal": {"min": info.wal_min, "max": info.wal_max},
                   "backups": [b.as_dict() for b in info.backups]}
            out.result(doc, _table(doc))
            return 0
        if args.action == "verify":
            out.say(f"restoring the latest state of {repo.url} into a scratch cluster...")
            report = verify(repo)
            dbs = ", ".join(f"{d['name']} ({d['tables']} tables)" for d in report["databases"])
            label = report["backup"]["label"]
            out.result(report, f"{report['repository']}: backup {label} restores and passes "
                               f"pg_amcheck; databases: {dbs}")
            return 0
        assert target is not None
        out.say(f"restoring {repo.url} to {target.describe()} into {args.pgdata}...")
        done = restore(repo, args.pgdata.resolve(), target)
        doc = {"repository": repo.url, "backup": done.backup.as_dict(),
               "target": target.describe(), "pgdata": str(done.pgdata)}
        out.result(doc, f"restored {done.backup.label} + WAL to {target.describe()} into "
                        f"{done.pgdata} (stopped; start it with pg_ctl)")
        return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def _table(doc: dict[str, Any]) -> str:
    lines = [f"{doc['repository']} (stanza {doc['stanza']}): WAL "
             f"{doc['wal']['min'] or '-'} .. {doc['wal']['max'] or '-'}"]
    if not doc["backups"]:
        return lines[0] + "\nno backups"
    lines.append(f"{'LABEL':32} {'TYPE':5} {'START':25} {'STOP':25} {'SIZE':>9} "
                 f"{'STORED':>9}  WAL")
    for b in doc["backups"]:
        lines.append(f"{b['label']:32} {b['type']:5} {b['start']:25} {b['stop']:25} "
                     f"{_size(b['size']):>9} {_size(b['repo_size']):>9}  "
                     f"{b['wal_start']}..{b['wal_stop']}")
    return "\n".join(lines)
