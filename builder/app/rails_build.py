"""Bake-time steps around the team's app that are not the app layer's own copy.

The build itself is cloudinit/rails/app-build (rendered into the image as
builder.bake.app_layer.APP_BUILD_HOOK and run by the app layer in a chroot):
Bundler frozen and --local, native extensions, assets:precompile. For that the
image carries a compiler and headers (BUILD_ONLY_PACKAGES, added by the Ruby
renderer for an own app); `purge_build_packages` takes them out of the image
tree again once the app is built, so no compiler ships.
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import UserError
from builder.proc import CommandError, run

#: What native gem extensions need at bake time and the image never keeps.
BUILD_ONLY_PACKAGES: tuple[str, ...] = ("build-essential", "ruby-dev", "libpq-dev", "pkg-config")
#: Programs that must be gone from the image after the purge.
COMPILERS: tuple[str, ...] = ("cc", "gcc", "c++", "g++", "cpp", "make")

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


def purge_build_packages(tree: Path) -> list[str]:
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
