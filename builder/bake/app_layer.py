"""The app layer: the team's own code at app.root, built by the app's hook, cached.

Between the base layer and the config layer. Its cache key is the tree
digest of the filtered source (builder/app/digest.py) plus what the build
depends on: the base layer, app.root, the build hook's bytes and this code's
version. So an unchanged app is reused as it is, and a one-file change
rebuilds this layer only (the config layer is rewritten anyway: it is cheap).

    miss  copy the filtered tree to <tree>/<app.root>; if the rendered files
          hold APP_BUILD_HOOK, run it in a chroot of the image tree, in a
          mount namespace of its own where everything but app.root is
          read-only (so it cannot touch the base layer's hard-linked files)
          and /tmp is a fresh tmpfs; then keep <app.root> in the cache
    hit   a hard-linked copy of the cached directory at <app.root>

The hook is called `APP_BUILD_HOOK APP_ROOT` with the working directory
APP_ROOT, HOME=/tmp/home, RAILS_ENV/RACK_ENV set; it must write only under
APP_ROOT (that is all the cache keeps). Nothing is cached when it fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.app.source import AppSource
from builder.bake.tree import in_tree, make_dirs, replace_file, set_owner_mode
from builder.errors import UserError
from builder.proc import CommandError, run

#: Where a renderer puts the app's build script (apprails' hook); optional.
APP_BUILD_HOOK = "/usr/lib/amibake/app-build"
#: Part of the layer's key: bump when this module changes what the layer holds.
APP_LAYER_CODE_VERSION = "app-layer-1"

#: Runs as root in a private mount namespace: $1 tree, $2 app root, $3 hook, $4 env.
_SANDBOX = r"""
set -eu
T=$1
mount --bind "$T" "$T"
mount -o remount,bind,ro "$T"
mount --bind "$T$2" "$T$2"
mount -o remount,bind,rw "$T$2"
mount -t tmpfs -o mode=1777 tmpfs "$T/tmp"
mount -t proc proc "$T/proc"
mount --rbind /dev "$T/dev"
mkdir -p "$T/tmp/home"
exec 1>&2
exec chroot "$T" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME=/tmp/home LANG=C.UTF-8 RAILS_ENV="$4" RACK_ENV="$4" \
    /bin/sh -c 'cd "$1" && exec "$2" "$1"' app-build "$2" "$3"
"""


@dataclass(frozen=True)
class AppLayer:
    """What the app layer is built from (all of it is in the key)."""

    source: AppSource
    root: str
    hook: bytes | None
    environment: str

    def key(self, base_key: str) -> str:
        doc = {
            "code": APP_LAYER_CODE_VERSION,
            "base": base_key,
            "tree": self.source.tree_digest,
            "root": self.root,
            "hook": hashlib.sha256(self.hook).hexdigest() if self.hook is not None else None,
            "environment": self.environment,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def write_app_layer(tree: Path, layer: AppLayer, cached: Path | None, keep: Path | None) -> None:
    """The app at <tree>/<layer.root>: from `cached` (a hit), or copied and built.

    On a miss, the built directory is copied to `keep` (absent) for the cache.
    """
    assert layer.source.tree is not None
    root = PurePosixPath(layer.root)
    make_dirs(tree, root.parent)
    dest = in_tree(tree, root)
    if dest.exists() or dest.is_symlink():
        raise UserError(f"the base layer already has {layer.root}; app.root must be new",
                        hint="choose another app.root (e.g. /srv/app)")
    if cached is not None:
        run(["cp", "-a", "--link", cached, dest])
        return
    run(["cp", "-a", "--no-preserve=ownership", layer.source.tree, dest])
    run(["chown", "-R", "--no-dereference", "0:0", dest])
    if layer.hook is not None:
        run_hook(tree, layer)
    if keep is not None:
        run(["cp", "-a", dest, keep])


def run_hook(tree: Path, layer: AppLayer) -> None:
    """The app's build hook, in the image tree, only app.root writable."""
    assert layer.hook is not None
    replace_file(tree, APP_BUILD_HOOK, layer.hook)
    set_owner_mode(tree, APP_BUILD_HOOK, 0, 0, 0o755)
    try:
        run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _SANDBOX,
             "sandbox", tree, layer.root, APP_BUILD_HOOK, layer.environment], capture=True)
    except CommandError as err:
        lines = [line for line in err.stderr.strip().splitlines() if line.strip()]
        raise UserError(f"the app's build ({APP_BUILD_HOOK}) failed: "
                        f"{lines[-1].strip() if lines else 'exit ' + str(err.returncode)}",
                        hint="nothing was cached or stored; run with --debug for its "
                             "whole output") from None


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
