"""`amibake cache list|prune`: the layer cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "cache", parents=[parent], help=VERBS["cache"],
        description="Base OS layers, app layers and the base layers' root filesystems, "
                    "cached by the sha256 of their inputs.",
    )
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="layer cache (default: $AMIBAKE_CACHE_DIR or ~/.cache/amibake)")
    sub = p.add_subparsers(dest="cache_verb", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[parent], help="cached layers, most recently used first")
    ls.set_defaults(func=run_list)
    prune = sub.add_parser("prune", parents=[parent],
                           help="drop all but the most recently used layers (and root "
                                "filesystems), and leftovers")
    prune.add_argument("--keep", type=int, default=1, metavar="N",
                       help="layers kept, most recently used first (default: 1; 0 empties)")
    prune.set_defaults(func=run_prune)


def _cache(args: argparse.Namespace) -> Any:
    from builder.bake.cache import LayerCache, default_cache_dir

    return LayerCache(args.cache_dir or default_cache_dir())


def run_list(args: argparse.Namespace, out: Output) -> int:
    cache = _cache(args)
    rows = [{"key": e.key, "size": e.size, "kernel": e.meta.get("kernel"),
             "created": e.meta.get("created"),
             "packages": len(e.meta.get("packages_requested", ()))}
            for e in cache.entries()]
    root_fs = [{"key": image.stem, "path": str(image), "base_key": meta.get("base_key"),
                "size": image.stat().st_blocks * 512, "fs_size": meta.get("size")}
               for image, meta in cache.root_images()]
    corrupt = [str(p) for p in cache.corrupt()]
    lines = [f"base {r['key'][:16]}  {r['size'] / 2**20:6.0f} MiB  {r['created']}  "
             f"{r['packages']} packages, kernel {r['kernel']}" for r in rows]
    lines += [f"rootfs {r['key'][:14]}  {r['size'] / 2**20:6.0f} MiB  root filesystem of base "
              f"{str(r['base_key'])[:16]}" for r in root_fs]
    lines += [f"corrupt {p} (unreadable description; `amibake cache prune` removes it)"
              for p in corrupt]
    text = "\n".join(lines) or f"no cached layers in {cache.root}"
    out.result({"cache_dir": str(cache.root), "layers": rows, "root_fs": root_fs,
                "corrupt": corrupt}, text)
    return 0


def run_prune(args: argparse.Namespace, out: Output) -> int:
    if args.keep < 0:
        raise UserError("--keep must be 0 or more")
    cache = _cache(args)
    removed = cache.prune(args.keep)
    text = "\n".join(f"removed {p}" for p in removed) or "nothing to prune"
    out.result({"cache_dir": str(cache.root), "removed": [str(p) for p in removed]}, text)
    return 0
