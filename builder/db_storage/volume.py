"""The db role's persistent EBS volume: how it is found (tags), made and mounted.

Nothing here talks to AWS: the stack template, `launch --target aws`, the
instance profile's policy and the on-instance attach step all take the tags
and settings from these functions, so the volume the boot step looks for is
the one that was made and the one the policy lets it attach.
"""

from __future__ import annotations

from typing import Final

from builder.manifest.model import Manifest

#: tag keys the volume carries (and the boot step filters on)
STACK_TAG = "amibake:stack"
ROLE_TAG = "amibake:role"
VOLUME_TYPE: Final = "gp3"
#: the device name the attach asks for; on Nitro instances the volume shows up as
#: /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id>, on Xen as /dev/xvdf
DEVICE = "/dev/sdf"
#: filesystem label of the volume (ext4 labels are at most 16 bytes)
LABEL = "amibake-data"


def stack_label(m: Manifest) -> str:
    """The value of the amibake:stack tag: the stack's name (stack.name, default the
    manifest's name; the same as builder.stack.template.stack_name)."""
    return (m.stack.name if m.stack is not None else "") or m.name


def ebs_roles(m: Manifest) -> tuple[str, ...]:
    """Roles whose PostgreSQL data lives on an EBS volume."""
    pg = m.components.postgresql
    if pg is None or pg.storage != "ebs":
        return ()
    return tuple(name for name, role in m.roles.items() if "postgresql" in role.components)


def volume_tags(m: Manifest, role: str) -> dict[str, str]:
    """The tags that name the role's volume: stack and role (the policy's conditions)."""
    return {STACK_TAG: stack_label(m), ROLE_TAG: role}


def volume_size(m: Manifest) -> int:
    """GiB of a new volume (components.postgresql.volume_size)."""
    pg = m.components.postgresql
    assert pg is not None
    return pg.volume_size
