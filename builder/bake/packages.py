"""The installed package list of a root tree, read from its dpkg database."""

from __future__ import annotations

from pathlib import Path

from builder.bake.tree import in_tree
from builder.proc import run


def dpkg_packages(tree: Path) -> dict[str, str]:
    """Installed packages (status `ii`) → version, sorted by name."""
    proc = run(
        [
            "dpkg-query", f"--admindir={in_tree(tree, '/var/lib/dpkg')}", "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ],
        capture=True,
    )
    packages: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        status, _, rest = line.partition("\t")
        name, _, version = rest.partition("\t")
        if status.startswith("ii") and name:
            packages[name] = version
    return dict(sorted(packages.items()))
