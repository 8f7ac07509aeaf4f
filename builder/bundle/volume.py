"""`bundle --volume DIR`: a filesystem image of a running system's tree.

Like ec2-bundle-vol: the tree (usually `/`) is copied with rsync, leaving
out the user's excludes, the contents of /mnt, /proc, /sys, /dev, /tmp and
/run (their directories stay, as mount points), the bundle's own
destination, and files that hold secrets (`SENSITIVE_RULES`: password
hashes, private keys, credentials, histories, cloud-init's instance data,
logs, amibake's own env files; `filter_sensitive`); then `mkfs.ext4 -d`
turns the copy into an ext4 image without any mount or loop device. The
copy lives next to the image, in the destination, and is removed whatever
happens; a failed run removes the image too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.proc import run

SYSTEM_EXCLUDES = ("/mnt", "/proc", "/sys", "/dev", "/tmp", "/run")
#: Secrets must not ship in an AMI (left out unless --no-filter), as rsync
#: filter rules in order, first match wins: ("-", pattern) leaves out, ("+",
#: pattern) keeps what a later rule would leave out. A pattern starting with
#: '/' is anchored at the tree's root; one without matches at any depth.
SENSITIVE_RULES: tuple[tuple[str, str], ...] = (
    # amibake's own environment (database password, secrets) and state
    ("-", "/etc/amibake/*.env"), ("-", "/var/lib/amibake"),
    # the system's password hashes and private keys
    ("-", "/etc/shadow*"), ("-", "/etc/gshadow*"), ("-", "/etc/ssl/private/*"),
    ("-", "/etc/ssh/ssh_host_*key"),
    # cloud-init's stored user-data, metadata and per-instance state
    ("-", "/var/lib/cloud/instance*"),
    # logs: the directories stay (services expect them), their contents go
    ("+", "/var/log/**/"), ("-", "/var/log/**"),
    # users' credentials and histories, wherever their home is
    ("-", ".aws/"), ("-", ".netrc"), ("-", ".pgpass"), ("-", ".docker/config.json"),
    ("-", ".gnupg/"), ("-", ".ssh/authorized_keys"),
    ("-", ".*history"), ("-", ".lesshst"), ("-", ".viminfo"),
    # private keys by name (what ec2-bundle-vol filters); public halves stay
    ("+", "*.pub"), ("-", ".ssh/id_*"),
    ("-", "*.pem"), ("-", "*.priv"), ("-", "*.gpg"), ("-", "*.jks"), ("-", "*id_rsa*"),
    ("-", "*id_dsa*"), ("-", "*id_ecdsa*"), ("-", "*id_ed25519*"),
    ("-", "/etc/udev/rules.d/*-persistent-net.rules"),
)
MiB = 1024 * 1024


@dataclass(frozen=True)
class VolumeRequest:
    source: Path  # the tree to image, "/" for the running system
    image: Path  # the ext4 image to write
    excludes: tuple[str, ...] = ()  # absolute paths in the tree, or rsync patterns
    size_mib: int = 0  # 0: the tree's size plus headroom
    label: str = "root"
    filter_sensitive: bool = True


def filter_rules(source: Path, request: VolumeRequest) -> list[tuple[str, str]]:
    """(rule, pattern) pairs, "-" leaves out and "+" keeps, first match wins:
    the user's excludes, the mount points' contents, the bundle's own
    destination, then the secrets (SENSITIVE_RULES)."""
    rules: list[tuple[str, str]] = []
    source = source.resolve()
    for pattern in request.excludes:
        if pattern.startswith("/"):
            p = Path(pattern)
            if p.is_relative_to(source) and source != Path("/"):
                pattern = "/" + str(p.relative_to(source))
        rules.append(("-", pattern))
    for system in SYSTEM_EXCLUDES:
        rules.append(("-", f"{system}/*"))
    destination = request.image.parent.resolve()
    if destination == source:
        raise UserError(
            f"the destination {destination} is the volume itself",
            hint="put the bundle in a directory that is excluded, e.g. /mnt",
        )
    if destination.is_relative_to(source):
        rules.append(("-", "/" + str(destination.relative_to(source))))
    if request.filter_sensitive:
        rules += SENSITIVE_RULES
    return rules


def rsync_filters(source: Path, request: VolumeRequest) -> list[str]:
    """`filter_rules` as rsync --include/--exclude arguments, in order."""
    args: list[str] = []
    for rule, pattern in filter_rules(source, request):
        args += ["--exclude" if rule == "-" else "--include", pattern]
    return args


def make_volume_image(request: VolumeRequest) -> Path:
    """Write an ext4 image of `request.source` (minus excludes) to `request.image`."""
    source = Path(request.source)
    if not source.is_dir():
        raise UserError(f"--volume {source} is not a directory", hint="e.g. --volume /")
    image = Path(request.image)
    image.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _staging(image.parent) as staging:
            run(["rsync", "-aHAXS", "--numeric-ids", *rsync_filters(source, request),
                 f"{source.resolve()}/", f"{staging}/"])
            size = request.size_mib * MiB or _auto_size(staging)
            image.unlink(missing_ok=True)
            run(["mkfs.ext4", "-q", "-F", "-L", request.label, "-d", str(staging),
                 str(image), f"{size // 1024}k"])
    except BaseException:
        image.unlink(missing_ok=True)
        raise
    return image


def _auto_size(tree: Path) -> int:
    used = int(run(["du", "-sx", "--block-size=1", str(tree)], capture=True).stdout.split()[0])
    inodes = sum(1 + len(files) + len(dirs) for _, dirs, files in os.walk(tree))
    size = int(used * 1.25) + inodes * 512 + 64 * MiB
    return (size + MiB - 1) // MiB * MiB


@contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    staging = Path(tempfile.mkdtemp(prefix=".amibake-volume-", dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_excludes(values: Sequence[str]) -> tuple[str, ...]:
    """`--exclude a,b --exclude c` → ("a", "b", "c")."""
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())
