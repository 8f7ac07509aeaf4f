"""`amibake images list|inspect|verify|prune`: the local image store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "images", parents=[parent], help=VERBS["images"],
        description="The local image store: images/NAME/VERSION/{disk.raw,image.json}.",
    )
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="local image store (default: $AMIBAKE_STORE or ./images)")
    sub = p.add_subparsers(dest="images_verb", metavar="ACTION", required=True)

    ls = sub.add_parser("list", parents=[parent], help="every stored image")
    ls.add_argument("name", nargs="?", help="only this image name")
    ls.set_defaults(func=run_list)

    inspect = sub.add_parser("inspect", parents=[parent], help="one image's image.json")
    inspect.add_argument("ref", metavar="IMAGE",
                         help="NAME (newest), NAME:VERSION, or a local id img-…")
    inspect.add_argument("--packages", action="store_true",
                         help="also print the installed package list")
    inspect.set_defaults(func=run_inspect)

    verify = sub.add_parser("verify", parents=[parent],
                            help="hash an image's disk again and compare it with image.json")
    verify.add_argument("ref", metavar="IMAGE",
                        help="NAME (newest), NAME:VERSION, or a local id img-…")
    verify.set_defaults(func=run_verify)

    prune = sub.add_parser("prune", parents=[parent],
                           help="remove old versions (the newest is always kept)")
    prune.add_argument("name", nargs="?", help="only this image name (default: all)")
    prune.add_argument("--keep", type=int, required=True, metavar="N",
                       help="versions kept per name, newest first (at least 1)")
    prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    prune.set_defaults(func=run_prune)


def _store(args: argparse.Namespace) -> Any:
    from builder.store import Store, default_store_root

    return Store(args.store or default_store_root())


def run_list(args: argparse.Namespace, out: Output) -> int:
    store = _store(args)
    images = store.list(args.name)
    rows = [
        {"name": i.name, "version": i.version, "id": i.id, "roles": list(i.roles),
         "build_time": i.build_time, "used_size": i.disk.used_size, "path": str(i.dir),
         "boot_test": "skipped" if i.boot_test.get("skipped") else "passed"}
        for i in images
    ]
    if not rows:
        text = f"no images in {store.root}"
    else:
        header = f"{'NAME':<20} {'VERSION':<10} {'ID':<16} {'BUILT':<20} {'USED':>8}  ROLES"
        text = "\n".join([header] + [
            f"{r['name']:<20} {r['version']:<10} {r['id']:<16} {r['build_time']:<20} "
            f"{r['used_size'] / 2**20:>6.0f}Mi  {','.join(r['roles'])}"
            + ("  (not boot-tested)" if r["boot_test"] == "skipped" else "")
            for r in rows
        ])
    out.result({"store": str(store.root), "images": rows}, text)
    return 0


def run_inspect(args: argparse.Namespace, out: Output) -> int:
    image = _store(args).resolve(args.ref)
    doc = image.to_json()
    doc["path"] = str(image.dir)
    if not args.packages and not out.json_mode:
        doc["packages"] = f"{len(image.packages)} packages (--packages to list)"
    skip = ("packages", "inputs", "disk", "boot_test", "roles")
    lines = [f"{k}: {v}" for k, v in doc.items() if k not in skip]
    lines.append(f"roles: {', '.join(image.roles)}")
    lines += _boot_test_lines(image.boot_test)
    lines.append(f"disk: {image.disk_path} digest={image.disk.digest} "
                 f"apparent={image.disk.apparent_size} used={image.disk.used_size}")
    lines += [f"input {k}: {v}" for k, v in sorted(image.inputs.items())]
    if args.packages:
        lines += [f"package {n} {v}" for n, v in image.packages.items()]
    else:
        lines.append(str(doc["packages"]))
    out.result(doc, "\n".join(lines))
    return 0


def _boot_test_lines(boot_test: dict[str, Any]) -> list[str]:
    if boot_test.get("skipped"):
        return ["boot test: skipped (--skip-boot-test)"]
    lines = []
    for r in boot_test.get("results", ()):
        failed = [c["name"] for c in r.get("checks", ()) if not c.get("ok")]
        verdict = "FAILED " + ", ".join(failed) if failed else "passed"
        lines.append(f"boot test: {r.get('role')} ({r.get('boot')}, {r.get('accel')}) {verdict}, "
                     f"ready after {r.get('seconds_to_ready')} s")
    return lines


def run_verify(args: argparse.Namespace, out: Output) -> int:
    """The disk's digest taken again, with the algorithm image.json names
    (builder.disk_digest); exit 1 when it differs."""
    from builder.disk_digest import file_digest, split

    image = _store(args).resolve(args.ref)
    recorded = image.disk.digest
    try:
        got = file_digest(image.disk_path, split(recorded)[0])
    except FileNotFoundError:
        raise UserError(f"{image.disk_path} is missing", hint="the store entry is damaged: "
                        "remove it and bake the image again") from None
    ok = got == recorded
    text = (f"{image.name} {image.version}: {image.disk_path} "
            + (f"matches image.json ({recorded})" if ok
               else f"DIFFERS from image.json: {got}, recorded {recorded}"))
    out.result({"name": image.name, "version": image.version, "disk": str(image.disk_path),
                "recorded": recorded, "digest": got, "ok": ok}, text)
    return 0 if ok else 1


def run_prune(args: argparse.Namespace, out: Output) -> int:
    if args.keep < 1:
        raise UserError("--keep must be at least 1", hint="the newest version is always kept")
    store = _store(args)
    names = [args.name] if args.name else sorted({i.name for i in store.list()})
    removed = []
    for name in names:
        if args.dry_run:
            removed += store.list(name)[:-args.keep]
        else:
            removed += store.prune(name, args.keep)
    verb = "would remove" if args.dry_run else "removed"
    text = "\n".join(f"{verb} {i.name} {i.version} ({i.id})" for i in removed) or "nothing to prune"
    out.result({"removed": [{"name": i.name, "version": i.version, "id": i.id}
                            for i in removed], "dry_run": args.dry_run}, text)
    return 0
