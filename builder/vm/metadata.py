"""The instance metadata a local VM gets from amibake's IMDS emulator."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from builder.manifest.model import Manifest


def new_instance_id() -> str:
    """An EC2-shaped instance id, unique per boot (the dispatcher is per instance-id)."""
    return "i-" + secrets.token_hex(9)[:17]


@dataclass(frozen=True)
class LocalInstanceIdentity:
    """Who a local VM is: the bits the emulator serves and SMBIOS shows."""

    instance_id: str
    role: str
    instance_type: str
    public_key: str
    user_data: bytes
    secrets: dict[str, str]


def secret_values(manifest: Manifest) -> dict[str, str]:
    """Fresh random values for the manifest's secrets, keyed by store name."""
    values: dict[str, str] = {}
    db = manifest.app.database.password
    values[db.name] = secrets.token_urlsafe(18)
    pg = manifest.components.postgresql
    passphrase = pg.backup.repository.cipher_passphrase if pg and pg.backup else None
    if passphrase is not None:
        values[passphrase.name] = secrets.token_urlsafe(24)
    for ref in manifest.app.secrets.values():  # SECRET_KEY_BASE and the like: hex
        values[ref.name] = secrets.token_hex(64)
    return values


#: Where a local VM's amibake-secret sends its SSM / Secrets Manager calls:
#: the IMDS emulator answers them at POST / (through the guestfwd relay).
LOCAL_SECRETS_ENDPOINT = "http://169.254.169.254/"


def local_user_data(manifest: Manifest, role: str, *, baked: bool = True) -> bytes:
    """The role's user-data for a local VM (secrets asked of the emulator)."""
    from builder.render import render_role

    rendered = render_role(manifest, role, baked=baked,
                           markers={"secrets-endpoint": LOCAL_SECRETS_ENDPOINT})
    return rendered.user_data
