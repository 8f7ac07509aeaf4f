"""Bake-time steps on the team's app, called by the app layer (builder/bake).

`build_app` runs cloudinit/rails/app-build (rendered into the image at
/usr/lib/amibake/app-build by builder.render.app) in a chroot of the image
tree where only app.root is writable: Bundler frozen and --local (gems from
vendor/cache or Debian's), native extensions, assets:precompile, and the
rendered database.yml put over the app's own. For the native extensions the image
carries a compiler and headers (BUILD_ONLY_PACKAGES, added by the Ruby
renderer for an own app); `purge_build_packages` takes them out of the tree
again, so no compiler ships: once per base layer, recorded and replayed on
later bakes by builder.bake.purge_cache.
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.proc import CommandError, run

#: Rendered by builder.render.app into the config layer; read here.
APP_BUILD = "/usr/lib/amibake/app-build"
RAILS_DIR = "/etc/amibake/rails"
DATABASE_YML = f"{RAILS_DIR}/database.yml"

#: What native gem extensions need at bake time and the image never keeps.
BUILD_ONLY_PACKAGES: tuple[str, ...] = ("build-essential", "ruby-dev", "libpq-dev", "pkg-config")
#: Programs that must be gone from the image after the purge.
COMPILERS: tuple[str, ...] = ("cc", "gcc", "c++", "g++", "cpp", "make")

#: Runs as root in a private mount namespace (its mounts go with it): $1 the
#: tree, $2 app.root, $3 the build script, $4 RAILS_ENV. Only app.root and a
#: fresh /tmp are writable.
_BUILD = r"""
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
[ -f "$T$3" ] || { echo "the image has no $3: the app's build step was not rendered" >&2; exit 1; }
exec 1>&2
exec chroot "$T" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME=/tmp/home LANG=C.UTF-8 RAILS_ENV="$4" RACK_ENV="$4" \
    /bin/sh -c 'cd "$1" && exec "$2" "$1"' app-build "$2" "$3"
"""

#: Runs as root in a private mount namespace (gone when it ends): $1 the tree.
_PURGE = r"""
set -eu
T=$1; shift
mount -t proc proc "$T/proc"
mount --rbind /dev "$T/dev"
exec chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
"""


def _in_image(tree: Path, *argv: str) -> str:
    done = run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PURGE,
                "purge", str(tree), *argv], capture=True)
    return done.stdout


def installed(tree: Path, packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` dpkg says are installed in the tree."""
    status = (tree / "var/lib/dpkg/status").read_text(errors="replace")
    present = set()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed"):
            present.add(fields.get("Package", ""))
    return [p for p in packages if p in present]


def compilers_in(tree: Path) -> list[str]:
    """Compiler programs still on the image's PATH (by name, links included)."""
    found = []
    for d in ("usr/local/bin", "usr/bin", "bin"):
        for name in COMPILERS:
            if (tree / d / name).is_symlink() or (tree / d / name).exists():
                found.append(f"/{d}/{name}")
    return found


def build_app(tree: Path, manifest: Manifest) -> None:
    """Build the app at <tree>/<app.root> (the code is there, the config layer
    written); writes only under app.root. UserError with the build's last line."""
    root = manifest.app.root.rstrip("/")
    appserver = manifest.components.appserver
    environment = appserver.environment if appserver is not None else "production"
    try:
        run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _BUILD,
             "app-build", str(tree), root, APP_BUILD, environment], capture=True)
    except CommandError as err:
        lines = [line.strip() for line in err.stderr.strip().splitlines() if line.strip()]
        raise UserError(f"the app's build failed: "
                        f"{lines[-1] if lines else 'exit ' + str(err.returncode)}",
                        hint="nothing was cached or stored; run with --debug for its "
                             "whole output") from None


def purge_build_packages(tree: Path, manifest: Manifest | None = None) -> list[str]:
    """Purge BUILD_ONLY_PACKAGES and what only they needed from the tree; the
    packages purged. dpkg replaces its files by rename and unlinks the
    packages' files, so the layer cache's hard-linked files stay intact."""
    present = installed(tree, BUILD_ONLY_PACKAGES)
    if present:
        try:
            _in_image(tree, "apt-get", "purge", "--yes", "--autoremove",
                      "-o", "APT::AutoRemove::SuggestsImportant=false", *present)
        except CommandError as exc:
            raise UserError(f"purging the build-only packages from the image failed: "
                            f"{exc.stderr.strip().splitlines()[-1:] or exc.returncode}",
                            hint="run with --debug to see apt-get's output") from exc
    left = compilers_in(tree)
    if left:
        raise UserError(f"the image still holds a compiler after the purge: {', '.join(left)}",
                        hint="a package the manifest lists needs it; drop that package")
    return present
