"""The boot step of `storage: ebs`: attach the role's volume, make its filesystem when
blank, mount it, before PostgreSQL (cloudinit/boot/amibake-ebs-attach does it).

A fragment of its own ("ebs-storage", set up before postgresql): the script
(cloudinit/boot/role/amibake-ebs-attach, only in roles that use it), the unit, the
volume's description for the script (/etc/amibake/ebs-volume.json: tags, mount
point, device, per role) and drop-ins by which PostgreSQL and the restore step
require the unit. At
first boot the dispatcher runs the script as the step's setup; it enables the
unit, so every later boot (a stop/start) attaches and mounts again.
"""

from __future__ import annotations

import json
import posixpath

from builder.db_storage.volume import DEVICE, LABEL, ebs_roles, volume_tags
from builder.manifest.model import Manifest, Role
from builder.render.base import role_script
from builder.render.common import ETC_DIR, UNIT_DIR, source_name
from builder.render.fragment import File, Fragment
from builder.render.postgresql import service_name
from builder.render.templates import render_template

UNIT = "amibake-ebs-attach.service"
SCRIPT_NAME = "amibake-ebs-attach"
CONFIG = f"{ETC_DIR}/ebs-volume.json"
#: seconds the boot step waits for the volume to exist, attach and show up
WAIT_SECONDS = 300
#: the database's restore-or-initdb step (with `backup`, builder/render/postgresql.py): it
#: runs after this one and only when the volume is mounted
RESTORE_UNIT = "amibake-db-restore.service"


def config_json(m: Manifest) -> bytes:
    """Every EBS role's volume, for the boot script (the same file in every role's image)."""
    pg = m.components.postgresql
    roles = {}
    for name in ebs_roles(m):
        assert pg is not None
        roles[name] = {"tags": volume_tags(m, name), "device": DEVICE, "label": LABEL,
                       "mount_point": posixpath.normpath(pg.mount_point),
                       "wait_seconds": WAIT_SECONDS}
    return (json.dumps({"version": 1, "roles": roles}, indent=2, sort_keys=True) + "\n").encode()


def render(manifest: Manifest, role: Role) -> Fragment:
    """The role's EBS step; an empty fragment when its data is not on EBS."""
    pg = manifest.components.postgresql
    if role.name not in ebs_roles(manifest) or pg is None:
        return Fragment(component="ebs-storage")
    mount = posixpath.normpath(pg.mount_point)
    common = {"app_name": manifest.app.name, "manifest_file": source_name(manifest),
              "mount_point": mount}
    script = role_script(SCRIPT_NAME)
    unit = render_template("storage/amibake-ebs-attach.service.j2", script=script.path,
                           before=[service_name(pg.version), RESTORE_UNIT], **common)
    dropin = render_template("storage/postgresql-ebs.conf.j2", **common)
    # the same requirement for the restore step: never a restore or initdb without the volume
    restore_dropin = File(f"{UNIT_DIR}/{RESTORE_UNIT}.d/amibake-ebs.conf", dropin)
    return Fragment(
        component="ebs-storage",
        files=(script, File(f"{UNIT_DIR}/{UNIT}", unit), File(CONFIG, config_json(manifest)),
               File(f"{UNIT_DIR}/postgresql@.service.d/amibake-ebs.conf", dropin),
               restore_dropin),
        services=(UNIT,),
        setup=(script.path,),
    )
