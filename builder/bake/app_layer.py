"""The app layer: the team's own code at app.root, built, cached.

After the config layer (the app's build reads the rendered Rails settings
from the tree) and before the disk. Its cache key is the tree digest of the
filtered source (builder/app/digest.py) plus what the build depends on: the
base layer, app.root, the environment, the rendered files the build reads
(BUILD_READS) and the build code itself. So an unchanged app is reused as it
is, and a one-file change rebuilds this layer only.

    miss  copy the filtered tree to <tree>/<app.root> (root:root), run the
          app's build (builder.app.rails_build.build_app: bundler, assets;
          it writes only under app.root), then keep <app.root> in the cache
    hit   a hard-linked copy of the cached directory at <app.root>
    both  then the build-only packages are purged from the tree
          (builder.bake.purge_cache: the purge of this base layer replayed,
          or run and recorded); that is not in the app layer's cache

Nothing is cached when the build fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.app import rails_build
from builder.app.source import AppSource
from builder.bake.rootfs import LayerFile
from builder.bake.tree import in_tree, make_dirs
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.proc import run

#: Part of the layer's key: bump when this module changes what the layer holds.
APP_LAYER_CODE_VERSION = "app-layer-1"
#: Rendered files the build reads (its script, the Rails settings): their bytes
#: are part of the key.
BUILD_READS = (rails_build.APP_BUILD, rails_build.RAILS_DIR + "/")
#: The build code itself is part of the key too.
BUILD_CODE = hashlib.sha256(Path(rails_build.__file__).read_bytes()).hexdigest()


@dataclass(frozen=True)
class AppLayer:
    """What the app layer is built from (all of it is in the key)."""

    source: AppSource
    root: str
    environment: str
    #: path → sha256 of the rendered files the build reads
    reads: tuple[tuple[str, str], ...]
    #: sha256 of the build code
    build: str

    def key(self, base_key: str) -> str:
        doc = {
            "code": APP_LAYER_CODE_VERSION,
            "base": base_key,
            "tree": self.source.tree_digest,
            "root": self.root,
            "environment": self.environment,
            "reads": list(self.reads),
            "build": self.build,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def app_layer_for(manifest: Manifest, app: AppSource, files: Sequence[LayerFile]) -> AppLayer:
    appserver = manifest.components.appserver
    reads = tuple(sorted((f.path, hashlib.sha256(f.content).hexdigest()) for f in files
                         if f.path.startswith(BUILD_READS)))
    return AppLayer(source=app, root=manifest.app.root,
                    environment=appserver.environment if appserver else "production",
                    reads=reads, build=BUILD_CODE)


def write_app_layer(tree: Path, layer: AppLayer, manifest: Manifest, cached: Path | None,
                    keep: Path | None) -> None:
    """The app at <tree>/<layer.root>: from `cached` (a hit), or copied and built.

    On a miss, the built directory is copied to `keep` (absent) for the cache.
    The build-only packages are still in the tree (builder.bake.purge_cache).
    """
    assert layer.source.tree is not None
    root = PurePosixPath(layer.root)
    make_dirs(tree, root.parent)
    dest = in_tree(tree, root)
    if dest.is_symlink() or (dest.exists() and any(dest.iterdir())):
        raise UserError(f"the image already has files in {layer.root} (the sample app's, or "
                        "the base layer's); the app's code needs it empty",
                        hint="choose another app.root (e.g. /srv/app)")
    if dest.exists():
        dest.rmdir()
    if cached is not None:
        run(["cp", "-a", "--link", cached, dest])
    else:
        run(["cp", "-a", "--no-preserve=ownership", layer.source.tree, dest])
        run(["chown", "-R", "--no-dereference", "0:0", dest])
        rails_build.build_app(tree, manifest)
        if keep is not None:
            run(["cp", "-a", dest, keep])
