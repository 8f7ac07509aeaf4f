"""What every role carries: the boot dispatcher, roles.json, cloud-init settings.

The dispatcher, the secret resolver and their units are the files in
cloudinit/boot/: scripts go to /usr/lib/amibake/ (0755), with the modules
they share (`*.py`) inlined, systemd units to /etc/systemd/system/.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import builder
from builder.cache_dir import DiskMemo
from builder.manifest.model import Manifest
from builder.render import docstrings
from builder.render.app import secret_key
from builder.render.common import ETC_DIR, LIB_DIR, UNIT_DIR
from builder.render.docstrings import is_python_script, strip_docstrings
from builder.render.fragment import File, Fragment
from builder.render.inline import inline_modules
from builder.render.postgresql import PASSPHRASE_SECRET
from builder.render.quoting import comment, yaml_flow

ROLES_JSON = f"{ETC_DIR}/roles.json"
DATASOURCE_CFG = "/etc/cloud/cloud.cfg.d/90_amibake.cfg"
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path", ".target", ".mount")
_SKIP_SUFFIXES = (".md", ".txt", ".pyc", ".orig", ".rej", "~")

#: cloud-init settings baked into images: metadata from EC2 (or the local
#: emulator), a NoCloud seed as fallback; C.UTF-8 as the images have no `locales`;
#: the instance's hostname in /etc/hosts (127.0.1.1), so sudo can resolve it.
DATASOURCE_TEXT = (
    "# amibake: where cloud-init looks for instance metadata.\n"
    "datasource_list: [Ec2, NoCloud, None]\n"
    "locale: C.UTF-8\n"
    "manage_etc_hosts: localhost\n"
)


def host_key_types(manifest: Manifest) -> list[str]:
    """cloud-init's ssh_genkeytypes: the host keys each instance generates once."""
    return list(manifest.image.ssh_host_key_types)


def host_key_settings(manifest: Manifest) -> str:
    return ("# SSH host keys each instance generates at its first boot\n"
            "# (image.ssh_host_key_types; cloud-init deletes any others).\n"
            f"ssh_genkeytypes: {yaml_flow(host_key_types(manifest))}\n")


def image_cloud_settings(
    manifest: Manifest, role_fragments: Mapping[str, Sequence[Fragment]]
) -> bytes:
    """90_amibake.cfg: the datasource settings, and, when the image carries
    PostgreSQL, the instance store left to its setup script.

    At first boot the dispatcher runs in parallel with cloud-init.service;
    cloud-init's mounts module would otherwise write its own fstab line for
    ephemeral0 and `mount -a` while the setup script makes the filesystem.
    """
    text = DATASOURCE_TEXT + host_key_settings(manifest)
    pg = manifest.components.postgresql
    carried = {f.component for fragments in role_fragments.values() for f in fragments}
    if pg is not None and "postgresql" in carried:
        store, mount = comment(pg.instance_store), comment(pg.mount_point)
        text += (
            f"# The instance store {store} is mounted at {mount} by\n"
            "# amibake's PostgreSQL setup (mkfs when blank), not by cloud-init.\n"
            f"mounts:\n  - {yaml_flow([pg.instance_store])}"
            "  # no mount point: cloud-init skips it\n"
        )
    return text.encode()


#: scripts a role's fragment ships itself (only where it is needed), not every image
ROLE_SCRIPTS = "role"


def boot_files() -> tuple[File, ...]:
    """Every file in cloudinit/boot/ (the dispatcher, secret resolver, units) but
    those under role/; the Python scripts with the modules they share inlined
    (builder.render.inline) and without their docstrings (builder.render.docstrings)."""
    boot = builder.TEMPLATES_DIR / "boot"
    if not boot.is_dir():
        return ()
    # Rendering them costs ~0.15 s (parse, inline, strip): done again only
    # when a file in the directory changes.
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                         for p in boot.rglob("*") if p.is_file()))
    return _boot_files(boot, stamp)


@functools.lru_cache(maxsize=2)
def _boot_files(boot: Path, stamp: tuple[tuple[str, int, int], ...]) -> tuple[File, ...]:
    del stamp  # the cache key: the directory's names, mtimes and sizes
    files = []
    for path in sorted(boot.rglob("*")):
        rel = path.relative_to(boot)
        if (
            not path.is_file()
            or any(p.startswith(".") or p == "__pycache__" for p in rel.parts)
            or rel.parts[0] == ROLE_SCRIPTS
            or path.name.endswith(_SKIP_SUFFIXES)
            or path.name.upper().startswith("README")
        ):
            continue
        if path.suffix == ".py":  # a module the scripts share: inlined into them
            continue
        content = path.read_bytes()
        if path.name.endswith(UNIT_SUFFIXES):
            files.append(File(f"{UNIT_DIR}/{path.name}", content))
            continue
        if is_python_script(content):  # user-data is capped at 16 KiB
            content = _shipped(content, boot, f"cloudinit/boot/{rel.as_posix()}")
        files.append(File(f"{LIB_DIR}/{rel.as_posix()}", content, mode=0o755))
    return tuple(files)


def _shipped(content: bytes, modules: Path, origin: str) -> bytes:
    source = inline_modules(content.decode(), modules, origin)
    key = f"{origin}\n{source}".encode()
    memo = _shipping_memo()
    if (kept := memo.get(key)) is not None:
        return kept
    shipped = strip_docstrings(source, origin).encode()
    memo.put(key, shipped)
    return shipped


@functools.lru_cache(maxsize=1)
def _shipping_memo() -> DiskMemo:
    """Stripped scripts kept between runs (parsing and tokenizing them is most
    of a warm `validate`), named for the stripping code."""
    return DiskMemo("shipped-scripts", [Path(docstrings.__file__)])


def role_script(name: str) -> File:
    """cloudinit/boot/role/NAME as /usr/lib/amibake/NAME, shipped like the boot files
    (the modules beside them inlined, docstrings stripped), for a fragment to carry."""
    boot = builder.TEMPLATES_DIR / "boot"
    path = boot / ROLE_SCRIPTS / name
    return File(f"{LIB_DIR}/{name}",
                _shipped(path.read_bytes(), boot, f"cloudinit/boot/{ROLE_SCRIPTS}/{name}"),
                mode=0o755)


def roles_json(manifest: Manifest, role_fragments: Mapping[str, Sequence[Fragment]]) -> bytes:
    """/etc/amibake/roles.json: each role's services and setup scripts, for the dispatcher."""
    roles: dict[str, dict[str, list[Any]]] = {}
    for name, fragments in role_fragments.items():
        roles[name] = {
            "components": [f.component for f in fragments],
            "services": [s for f in fragments for s in f.services],
            # per component, in order: its setup scripts, then its services
            # (queued at once, so one component's services start while the
            # next component is being set up)
            "steps": [
                {"component": f.component, "setup": list(f.setup), "services": list(f.services)}
                for f in fragments if f.setup or f.services
            ],
        }
    all_services = sorted({s for r in roles.values() for s in r["services"]})
    secret = manifest.app.database.password
    secrets = {
        "db_password": {"store": secret.store, "name": secret.name},
        **{secret_key(var): {"store": ref.store, "name": ref.name}
           for var, ref in sorted(manifest.app.secrets.items())},
    }
    cut = manifest.cutover
    if cut is not None and cut.receive is not None and cut.new_db.password is not None:
        ref = cut.new_db.password  # the db role's cutover login (render/cutover_login.py)
        secrets["cutover_password"] = {"store": ref.store, "name": ref.name}
    pg = manifest.components.postgresql
    passphrase = pg.backup.repository.cipher_passphrase if pg and pg.backup else None
    if passphrase is not None:  # the backup repository's (render/postgresql.py)
        secrets[PASSPHRASE_SECRET] = {"store": passphrase.store, "name": passphrase.name}
    doc = {
        "version": 1,
        "name": manifest.name,
        "manifest_version": str(manifest.version),
        "login_user": manifest.image.login_user,
        "roles": roles,
        "all_services": all_services,
        "secrets": secrets,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def render(
    manifest: Manifest,
    role_fragments: Mapping[str, Sequence[Fragment]],
    *,
    image: bool,
) -> Fragment:
    """The base fragment: boot files and roles.json (+ cloud-init settings for images)."""
    # A fried instance runs the dispatcher from runcmd: the units that start it
    # at boot are for images.
    files = [f for f in boot_files() if image or not f.path.startswith(UNIT_DIR + "/")]
    files.append(File(ROLES_JSON, roles_json(manifest, role_fragments)))
    if image:
        files.append(File(DATASOURCE_CFG, image_cloud_settings(manifest, role_fragments)))
    return Fragment(component="base", packages=("python3",), files=tuple(files))
