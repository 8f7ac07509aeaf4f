"""Registers the AMI in the home region from `ctx.root` (EBS snapshot or S3 bundle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.publish.context import TAG_BUNDLE, BundleRoot, EbsRoot, PublishContext
from builder.publish.images import delete_image_and_snapshots, snapshots_of, wait_available
from builder.steps import Outcome
from builder.wait import Waiter

ROOT_DEVICE = "/dev/xvda"
IMAGE_WAITER = Waiter("the AMI to become available", attempts=240, interval=5.0,
                      hint="check the image in the EC2 console; gc removes leftovers")


RequestBuilder = Callable[[PublishContext], dict[str, Any]]


def bundle_tag(ctx: PublishContext) -> dict[str, str]:
    """The home AMI of an instance-store publish names its bundle (prune and gc
    delete it); nothing for EBS-backed AMIs."""
    if isinstance(ctx.root, BundleRoot):
        return {TAG_BUNDLE: ctx.root.image_location}
    return {}


def register_request(ctx: PublishContext) -> dict[str, Any]:
    """RegisterImage parameters for `ctx.root` (EBS snapshot or S3 bundle)."""
    img = ctx.image
    request: dict[str, Any] = {
        "Name": ctx.ami_name,
        "Description": f"{img.name} {img.version} (amibake {img.id}, roles {','.join(img.roles)})",
        "Architecture": img.architecture,
        "VirtualizationType": "hvm",
        "BootMode": img.boot_mode,
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "ImdsSupport": "v2.0",
        "TagSpecifications": [{"ResourceType": "image", "Tags": ctx.tag_list()}],
    }
    if isinstance(ctx.root, EbsRoot):
        request["RootDeviceName"] = ROOT_DEVICE
        request["BlockDeviceMappings"] = [{
            "DeviceName": ROOT_DEVICE,
            "Ebs": {
                "SnapshotId": ctx.root.snapshot_id,
                "VolumeType": "gp3",
                "VolumeSize": ctx.upload.volume_size_gib if ctx.upload else img.volume_size_gib,
                "DeleteOnTermination": True,
            },
        }]
    elif isinstance(ctx.root, BundleRoot):
        # An instance-store AMI: the root device is the bundle in S3, so no Ebs
        # mapping (and no volume size: the bundle's image size is the root's);
        # RootDeviceName and the ephemeral0 mapping match the bundle manifest's
        # block_device_mapping (ami=sda1, root=/dev/sda1, ephemeral0=sdb). No
        # BootMode: UEFI needs an EBS root, and left out EC2 uses the
        # architecture's default (legacy BIOS on x86_64), which the baked disk
        # (GPT with BIOS and UEFI boot) supports.
        del request["BootMode"]
        request["ImageLocation"] = ctx.root.image_location
        request["RootDeviceName"] = "/dev/sda1"
        request["BlockDeviceMappings"] = [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
        request["TagSpecifications"] = [{"ResourceType": "image",
                                         "Tags": ctx.tag_list(bundle_tag(ctx))}]
    else:
        raise RuntimeError("register step needs ctx.root (set by an upload step)")
    return request


class RegisterImageStep:
    """Registers the AMI in the home region from `ctx.root`."""

    name = "register"

    def __init__(self, request_builder: RequestBuilder = register_request,
                 waiter: Waiter = IMAGE_WAITER) -> None:
        self.request_builder = request_builder
        self.waiter = waiter

    def describe(self, ctx: PublishContext) -> str:
        if ctx.backing == "instance-store":
            return (f"register {ctx.ami_name} in {ctx.home} ({ctx.image.architecture}, "
                    "instance-store root from the S3 bundle, IMDSv2 only, ENA)")
        return (f"register {ctx.ami_name} in {ctx.home} ({ctx.image.architecture}, "
                f"{ctx.image.boot_mode}, gp3 root, IMDSv2 only, ENA)")

    def run(self, ctx: PublishContext) -> None:
        ec2 = ctx.clients.ec2(ctx.home)
        image_id = ec2.register_image(**self.request_builder(ctx))["ImageId"]
        ctx.track(self.name, "image", ctx.home, image_id)
        ctx.image_ids[ctx.home] = image_id
        image = wait_available(ec2, image_id, self.waiter, ctx.out, "register")
        snaps = ctx.snapshot_ids.setdefault(ctx.home, [])
        for snap in snapshots_of(image):
            if snap not in snaps:
                snaps.append(snap)
                ctx.track(self.name, "snapshot", ctx.home, snap)
        ctx.out.say(f"registered {image_id} in {ctx.home}")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        ec2 = ctx.clients.ec2(ctx.home)
        for res in mine:
            if res.kind == "image":
                delete_image_and_snapshots(
                    ec2, res.ident,
                    tuple(r.ident for r in mine if r.kind == "snapshot"),
                )
                ctx.out.say(f"cleanup: deregistered {res.ident} in {res.region}")
        for res in mine:
            ctx.untrack(res.kind, res.region, res.ident)
        ctx.image_ids.pop(ctx.home, None)
