"""Start amibake's IMDS emulator (builder.imds) for one local instance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from builder.vm.metadata import LocalInstanceIdentity
from builder.vm.qemu import GUEST_ADDRESS, GUEST_NETWORK, mac_for


@contextmanager
def imds_server(identity: LocalInstanceIdentity) -> Iterator[Any]:
    """The emulator serving `identity`, on a free loopback port (`.port`)."""
    from builder.imds import ImdsConfig, ImdsServer

    config = ImdsConfig(
        instance_id=identity.instance_id,
        instance_type=identity.instance_type,
        local_ipv4=GUEST_ADDRESS,
        subnet_cidr=GUEST_NETWORK,
        mac=mac_for(identity.instance_id),
        public_keys=(identity.public_key,),
        user_data=identity.user_data,
        secrets=dict(identity.secrets),
        tags={"Name": f"amibake-{identity.role}", "amibake:role": identity.role},
    )
    with ImdsServer(config, host="127.0.0.1", port=0) as server:
        yield server
