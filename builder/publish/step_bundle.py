"""The instance-store root, part 1: the stored disk bundled (tar, gzip, AES, parts)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from builder.bundle.certs import BundleCredentials
from builder.bundle.writer import BundleRequest, bundle_image, check_prefix
from builder.publish.context import BundleState, InstanceStoreOptions, PublishContext
from builder.steps import Outcome

#: matches what register_request() registers for a BundleRoot: root /dev/sda1,
#: ephemeral0 on /dev/sdb
BLOCK_DEVICE_MAPPING = {"ami": "sda1", "root": "/dev/sda1", "ephemeral0": "sdb"}


def bundle_prefix(ctx: PublishContext) -> str:
    return check_prefix(ctx.ami_name)


class BundleStep:
    """Bundles the stored image's disk into a work directory."""

    name = "bundle"

    def __init__(self, options: InstanceStoreOptions, state: BundleState) -> None:
        self.options = options
        self.state = state

    def describe(self, ctx: PublishContext) -> str:
        return (f"bundle {ctx.image.disk_path} as {bundle_prefix(ctx)} for account "
                f"{ctx.account} (tar, gzip, AES-128-CBC, 10 MiB parts)")

    def run(self, ctx: PublishContext) -> None:
        creds = self.state.creds or BundleCredentials.load(
            self.options.cert, self.options.privatekey, self.options.ec2cert)
        workdir = Path(tempfile.mkdtemp(prefix="amibake-bundle-", dir=self.options.workdir))
        ctx.stack.callback(shutil.rmtree, workdir, True)  # the local bundle is transient
        self.state.bundle = bundle_image(
            BundleRequest(
                image=ctx.image.disk_path, destination=workdir, prefix=bundle_prefix(ctx),
                user=ctx.account, architecture=ctx.image.architecture,
                block_device_mapping=BLOCK_DEVICE_MAPPING,
            ),
            creds,
        )
        m = self.state.bundle.manifest
        ctx.out.say(f"bundled {m.size} bytes into {len(m.parts)} parts ({m.bundled_size} bytes)")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        return None  # the work directory goes with ctx.stack
