"""A local instance's metadata, as the guest sees it through the relay.

The emulator is builder.imds (real HTTP server on loopback); each request
goes through its own relay process, as qemu's
guestfwd cmd: form runs it.
"""

from __future__ import annotations

import gzip
import json
import shlex
import subprocess

from builder.vm.imds import imds_server
from builder.vm.metadata import LocalInstanceIdentity, new_instance_id
from builder.vm.qemu import GUEST_ADDRESS, mac_for, relay_command


def through_relay(port: int, request: bytes) -> tuple[int, bytes]:
    proc = subprocess.run(shlex.split(relay_command(port)),
                          input=request, capture_output=True, timeout=20, check=True)
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def identity() -> LocalInstanceIdentity:
    return LocalInstanceIdentity(
        instance_id=new_instance_id(), role="db", instance_type="m5d.large",
        public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBoottestkey amibake-test",
        user_data=b"#cloud-config\n# amibake-role: db\n",
        secrets={"/smallpayroll/db-password": "s3cret"},
    )


def test_the_guest_gets_a_token_and_its_own_metadata() -> None:
    ident = identity()
    with imds_server(ident) as imds:
        status, token = through_relay(imds.port, (
            b"PUT /latest/api/token HTTP/1.0\r\n"
            b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"))
        assert status == 200 and token

        def get(path: str) -> tuple[int, bytes]:
            return through_relay(imds.port, (
                f"GET {path} HTTP/1.0\r\nX-aws-ec2-metadata-token: {token.decode()}\r\n\r\n"
            ).encode())

        assert get("/latest/meta-data/instance-id") == (200, ident.instance_id.encode())
        assert get("/latest/meta-data/instance-type") == (200, b"m5d.large")
        status, key = get("/latest/meta-data/public-keys/0/openssh-key")
        assert status == 200 and key.strip() == ident.public_key.encode()
        # cloud-init matches the NIC by MAC: it must be the one qemu gives the guest
        assert get("/latest/meta-data/mac") == (200, mac_for(ident.instance_id).encode())
        assert get("/latest/meta-data/local-ipv4") == (200, GUEST_ADDRESS.encode())
        status, ud = get("/latest/user-data")
        assert status == 200
        ud = gzip.decompress(ud) if ud[:2] == b"\x1f\x8b" else ud
        assert ud == ident.user_data
        status, tags = get("/latest/meta-data/tags/instance/amibake:role")
        assert (status, tags) == (200, b"db")
        # IMDSv2: no token, no metadata
        status, _ = through_relay(imds.port, b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n")
        assert status == 401


def test_each_boot_is_a_new_instance() -> None:
    a, b = new_instance_id(), new_instance_id()
    assert a != b and a.startswith("i-") and len(a) == 19
    assert json.dumps(identity().secrets)
