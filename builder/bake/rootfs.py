"""Root filesystem layers: the base OS (mmdebstrap) and the config layer on top.

The base layer holds everything that depends only on the distribution, the
package set and the hooks below: it is what the layer cache keeps. The
config layer writes the rendered files of every baked role (the very files
the user-data renderer produces) into a copy of the base tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.bake.tree import copy_tree, in_tree, make_dirs, replace_file, set_owner_mode
from builder.errors import UserError
from builder.proc import run

#: Bump when the code below changes what a layer contains: it is part of the keys.
LAYER_CODE_VERSION = "layers-1"

ARCH_TO_DEBIAN = {"x86_64": "amd64"}

#: What every image carries, whatever its roles: boot, cloud-init, login.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64",
    "initramfs-tools", "cloud-init", "cloud-guest-utils", "openssh-server",
    "sudo", "ca-certificates", "ifupdown", "isc-dhcp-client", "iproute2",
    "netbase", "e2fsprogs", "python3",
)

ROOT_LABEL = "amibake-root"

#: mmdebstrap setup hook: runs before any package is unpacked.
SETUP_HOOK = """#!/bin/sh
# The db role creates its cluster on instance storage at boot: the package
# must not create a default one in the image.
set -eu
mkdir -p "$1/etc/postgresql-common"
echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"
"""

#: mmdebstrap customize hook: the root's fstab line. The initramfs is the one
#: initramfs-tools made during the install (its trigger runs once, at the
#: end): making it again after fstab is written changes nothing, as its only
#: reader there, the fsck hook, cannot tell the root's type in a chroot (no
#: device has that UUID on the build host) and leaves fsck out either way;
#: it cost ~6 s of every cold bake. kernel_version() checks it is there.
CUSTOMIZE_HOOK = """#!/bin/sh
set -eu
printf 'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\\n' @ROOT_UUID@ > "$1/etc/fstab"
"""


@dataclass(frozen=True)
class BaseSpec:
    """Everything the base layer depends on."""

    distro: str
    release: str
    architecture: str
    packages: tuple[str, ...]
    sources: tuple[Path, ...]

    @property
    def debian_arch(self) -> str:
        return ARCH_TO_DEBIAN[self.architecture]

    def key(self) -> str:
        """Hex sha256 of every input of the layer (sources by content)."""
        doc = {
            "code": LAYER_CODE_VERSION,
            "distro": self.distro,
            "release": self.release,
            "arch": self.debian_arch,
            "packages": sorted(set(self.packages)),
            "sources": [hashlib.sha256(p.read_bytes()).hexdigest() for p in self.sources],
            "hooks": [SETUP_HOOK, CUSTOMIZE_HOOK, _scrub_identity.__doc__, str(EATMYDATA_HOOKS),
                      _drop_eatmydata.__doc__],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def root_uuid(self) -> str:
        """The root filesystem's UUID: fixed by the layer's inputs (fstab holds it)."""
        return str(uuid.UUID(hex=self.key()[:32], version=4))


def base_spec(
    distro: str,
    release: str,
    architecture: str,
    role_packages: Iterable[str],
    extra_packages: Iterable[str],
    sources: Sequence[Path],
) -> BaseSpec:
    if architecture not in ARCH_TO_DEBIAN:
        raise UserError(f"unsupported architecture {architecture}", hint="use x86_64")
    packages = tuple(sorted(set(BASE_PACKAGES) | set(role_packages) | set(extra_packages)))
    return BaseSpec(distro, release, architecture, packages, tuple(sources))


#: dpkg without an fsync per file (as mkosi and debootstrap's users do): the
#: tree is archived into the cache when it is done, nothing needs to survive
#: a crash half-way. The file is removed again before the tree is cached.
UNSAFE_IO_CONF = "/etc/dpkg/dpkg.cfg.d/amibake-unsafe-io"

#: mmdebstrap's own hook directory that runs dpkg under eatmydata (no
#: fsync/sync at all, dpkg's database included, where force-unsafe-io only
#: spares the unpacked files): measured on the seed's 323 packages, base
#: layer 44.1/57.5 s with it against 54.2/58.6 s without, interleaved. Its
#: customize hook removes what it added; `_drop_eatmydata` makes sure.
EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")

#: mmdebstrap's phases, each stamped by a hook as it ends (see build_base):
#: apt update, download of every package and the essential set unpacked;
#: the essential set installed; the other packages unpacked and configured
#: (maintainer scripts, the initramfs); the customize hook (fstab).
BASE_PHASES = ("download_extract", "essential", "install", "customize")


def build_base(spec: BaseSpec, tree: Path, hookdir: Path) -> dict[str, float]:
    """mmdebstrap the base tree into `tree` (absent or empty).

    Returns the seconds each of BASE_PHASES took (hooks write a timestamp as
    each phase ends), then "scrub"; they add up to the build's wall time.
    """
    hookdir.mkdir(parents=True, exist_ok=True)
    setup = hookdir / "setup.sh"
    setup.write_text(SETUP_HOOK)
    customize = hookdir / "customize.sh"
    customize.write_text(CUSTOMIZE_HOOK.replace("@ROOT_UUID@", spec.root_uuid()))
    for hook in (setup, customize):
        hook.chmod(0o755)
    stamps = hookdir / "phases"
    stamps.write_text("")

    def stamp(name: str) -> str:
        return f"date '+{name} %s.%N' >> {shlex.quote(str(stamps))}"

    unsafe_io = f'"$1"{UNSAFE_IO_CONF}'
    start = time.time()
    run(
        [
            "mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
            f"--architectures={spec.debian_arch}",
            "--include=" + ",".join(spec.packages),
            f"--hook-directory={EATMYDATA_HOOKS}",
            f"--setup-hook={setup}",
            f"--setup-hook=mkdir -p \"$(dirname {unsafe_io})\"; "
            f"echo force-unsafe-io > {unsafe_io}",
            f"--extract-hook={stamp('extract')}",
            f"--essential-hook={stamp('essential')}",
            f"--customize-hook={stamp('customize')}",
            f"--customize-hook={customize}",
            f"--customize-hook=rm -f {unsafe_io}; {stamp('customize')}",
            spec.release, tree, *spec.sources,
        ],
        capture=True,
    )
    marks = [float(line.split()[1]) for line in stamps.read_text().splitlines()]
    _drop_eatmydata(tree, spec.packages)
    _scrub_identity(tree)
    ends = [*marks, time.time()]
    seconds: dict[str, float] = {}
    last = start
    for phase, end in zip((*BASE_PHASES, "scrub"), ends, strict=False):
        seconds[phase] = round(end - last, 2)
        last = end
    return seconds


def _drop_eatmydata(tree: Path, packages: Sequence[str]) -> None:
    """What the eatmydata hooks put in the tree, unless the image asked for it:
    their customize hook leaves /usr/bin/eatmydata behind when dpkg-query
    knows the package name (seen on bookworm). dpkg must be dpkg again."""
    if "eatmydata" not in packages:
        in_tree(tree, "/usr/bin/eatmydata", follow_last=False).unlink(missing_ok=True)
    if "libeatmydata1" not in packages:
        for lib in in_tree(tree, "/usr/lib").glob("*-linux-gnu*/libeatmydata.so*"):
            lib.unlink()
    diversions = in_tree(tree, "/var/lib/dpkg/diversions")
    if in_tree(tree, "/usr/bin/dpkg.distrib", follow_last=False).exists() or (
            diversions.is_file() and b"/usr/bin/dpkg.distrib" in diversions.read_bytes()):
        raise UserError("mmdebstrap's eatmydata hook left dpkg diverted in the base layer")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` (deepest first), from /proc/self/mountinfo."""
    root = os.path.realpath(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_build_tree(tree: Path) -> None:
    """Remove a (possibly half-built) mmdebstrap tree, never through a mount.

    mmdebstrap mounts /proc, /sys and /dev inside the tree while it runs and
    unmounts them when it ends, even when interrupted; should one remain,
    it is unmounted first, and a tree that still holds a mount is left alone.
    """
    for point in mounts_under(tree):
        run(["umount", "--recursive", point], check=False)
    left = mounts_under(tree)
    if left:
        raise UserError(f"{tree} still has mounts ({', '.join(map(str, left))}); not removed",
                        hint=f"unmount them (umount -R {left[-1]}) and remove {tree}")
    shutil.rmtree(tree, ignore_errors=True)


#: ssl-cert's self-signed pair, made by its postinst at bake time: baked, every
#: instance would share one TLS private key (PostgreSQL's pg_createcluster
#: turns ssl on with it). The db role's setup makes the instance's own.
SNAKEOIL = ("/etc/ssl/private/ssl-cert-snakeoil.key", "/etc/ssl/certs/ssl-cert-snakeoil.pem")


def _scrub_identity(tree: Path) -> None:
    """No SSH host keys, TLS snakeoil pair, machine-id, random seed, resolver,
    hostname or cloud-init state: each instance makes its own at first boot."""
    for key in in_tree(tree, "/etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for rel in SNAKEOIL:
        in_tree(tree, rel, follow_last=False).unlink(missing_ok=True)
    for rel in ("/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed"):
        in_tree(tree, rel, follow_last=False).unlink(missing_ok=True)
    for rel, content in (("/etc/machine-id", b""), ("/etc/resolv.conf", b""),
                         ("/etc/hostname", b"localhost\n")):
        replace_file(tree, rel, content)
        in_tree(tree, rel, follow_last=False).chmod(0o644)
    cloud = in_tree(tree, "/var/lib/cloud", follow_last=False)
    if cloud.is_symlink():
        cloud.unlink()
    shutil.rmtree(cloud, ignore_errors=True)
    for log in in_tree(tree, "/var/log").glob("cloud-init*"):
        log.unlink()


# ----------------------------------------------------------------- config layer

#: Units the packages enable on install; in a baked image the dispatcher
#: starts the services of the instance's role, and no other.
PACKAGE_DEFAULT_UNITS = ("nginx.service", "postgresql.service")
DISPATCH_UNIT = "amibake-dispatch.service"


@dataclass(frozen=True)
class LayerFile:
    """One file the config layer writes (the renderer's File, or amibake's own)."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root:root"


def config_key(files: Sequence[LayerFile], packages: Sequence[str]) -> str:
    """Hex sha256 of the config layer: every file's path, mode, owner and bytes."""
    h = hashlib.sha256(LAYER_CODE_VERSION.encode() + b"\0")
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.mode:o}\0{f.owner}\0".encode())
        h.update(hashlib.sha256(f.content).digest())
    h.update(json.dumps(sorted(packages)).encode())
    return h.hexdigest()


def _image_path(path: str) -> str:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise UserError(f"rendered file path must be absolute, without '..': {path}")
    return path


def _entries(tree: Path, db: str) -> dict[str, list[str]]:
    """name → fields of the tree's /etc/<db> (passwd or group)."""
    path = in_tree(tree, f"/etc/{db}")
    lines = path.read_text().splitlines() if path.is_file() else []
    return {fields[0]: fields for fields in (line.split(":") for line in lines)
            if len(fields) >= 3 and fields[2].isdigit()}


def write_config_layer(tree: Path, files: Sequence[LayerFile], services: Sequence[str]) -> None:
    """Write `files` into `tree`, create their users, switch role services off.

    Only ever replaces files (see `tree.replace_file`), and only inside the
    tree (links resolved as in a chroot); systemd-sysusers and systemctl
    take `--root` and replace /etc/passwd and unit symlinks by rename and
    unlink too.
    """
    for f in files:
        replace_file(tree, _image_path(f.path), f.content)
    sysusers = [f for f in files if f.path.startswith(("/usr/lib/sysusers.d/", "/etc/sysusers.d/"))]
    if sysusers:
        run(["systemd-sysusers", f"--root={tree}"], capture=True)
    passwd = _entries(tree, "passwd")
    users = {name: int(fields[2]) for name, fields in passwd.items()}
    groups = {name: int(fields[2]) for name, fields in _entries(tree, "group").items()}
    for user, home in _login_homes(sysusers):
        _make_home(tree, home, users[user], int(passwd[user][3]))
    for f in files:
        user, _, group = f.owner.partition(":")
        group = group or user
        if user not in users or group not in groups:
            raise UserError(
                f"rendered file {f.path} is owned by {f.owner}, which the image does not have",
                hint="the renderer must ship a sysusers.d entry for that user",
            )
        set_owner_mode(tree, f.path, users[user], groups[group], f.mode)
    dispatch = any(f.path.endswith("/" + DISPATCH_UNIT) for f in files)
    _switch_units(tree, services, enable_dispatch=dispatch)


def _login_homes(files: Sequence[LayerFile]) -> list[tuple[str, str]]:
    """(user, home) of each sysusers.d `u` entry whose home is under /home:
    systemd-sysusers does not create home directories, useradd -m would."""
    homes = []
    for f in files:
        for line in f.content.decode().splitlines():
            fields = shlex.split(line, comments=True)
            if len(fields) >= 5 and fields[0] == "u" and fields[4].startswith("/home/"):
                homes.append((fields[1], fields[4]))
    return homes


def _make_home(tree: Path, home: str, uid: int, gid: int) -> None:
    """`home` with a copy of /etc/skel, owned by the user, 0700 (Debian's HOME_MODE)."""
    home = _image_path(home)
    target = in_tree(tree, home)
    if target.exists():
        return
    make_dirs(tree, PurePosixPath(home).parent)
    target.mkdir(mode=0o700)
    set_owner_mode(tree, home, uid, gid, 0o700)
    copy_tree(tree, "/etc/skel", home, uid, gid, dir_mode=0o700)


def _switch_units(tree: Path, services: Sequence[str], *, enable_dispatch: bool) -> None:
    present = sorted({u for u in (*PACKAGE_DEFAULT_UNITS, *services) if _unit_file(tree, u)})
    if present:
        run(["systemctl", f"--root={tree}", "--no-reload", "disable", *present], capture=True)
    if enable_dispatch:
        run(["systemctl", f"--root={tree}", "--no-reload", "enable", DISPATCH_UNIT],
            capture=True)


def _unit_file(tree: Path, unit: str) -> bool:
    name = unit
    if "@" in unit:
        prefix, _, rest = unit.partition("@")
        name = f"{prefix}@.{rest.rpartition('.')[2]}"
    return any(
        in_tree(tree, f"{d}/{name}").exists()
        for d in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
    )


def kernel_version(tree: Path) -> str:
    """The one kernel installed in /boot (a cloud kernel)."""
    boot = in_tree(tree, "/boot")
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise UserError(f"expected one kernel in the image's /boot, found {len(kernels)}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    if not in_tree(tree, f"/boot/initrd.img-{version}").exists():
        raise UserError(f"the image has no initramfs for kernel {version}")
    return version
