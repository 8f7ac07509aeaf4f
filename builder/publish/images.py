"""AMIs and snapshots as the publishing steps and the life-cycle verbs see them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from builder.aws.clients import error_code
from builder.errors import UserError
from builder.wait import NotYet, Waiter, wait_for

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from builder.output import Output


def snapshots_of(image: Any) -> list[str]:
    """The EBS snapshots an image's block device mappings name."""
    return [
        bdm["Ebs"]["SnapshotId"]
        for bdm in image.get("BlockDeviceMappings", [])
        if bdm.get("Ebs", {}).get("SnapshotId")
    ]


def tags_of(resource: Any) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def describe_image(ec2: EC2Client, image_id: str) -> dict[str, Any] | None:
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            return None
        raise
    return dict(images[0]) if images else None


def delete_snapshot(ec2: EC2Client, snapshot_id: str) -> bool:
    """Delete `snapshot_id`; False when it was already gone."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as exc:
        if "NotFound" in error_code(exc):
            return False
        raise
    return True


def delete_image_and_snapshots(
    ec2: EC2Client, image_id: str, extra_snapshots: tuple[str, ...] = ()
) -> list[str]:
    """Deregister `image_id` and delete its snapshots; returns the snapshots deleted."""
    image = describe_image(ec2, image_id)
    snaps = list(dict.fromkeys([*(snapshots_of(image) if image else []), *extra_snapshots]))
    if image is not None:
        ec2.deregister_image(ImageId=image_id)
    for snap in snaps:
        delete_snapshot(ec2, snap)
    return snaps


def wait_available(ec2: EC2Client, image_id: str, waiter: Waiter, out: Output,
                   label: str) -> dict[str, Any]:
    """Wait until `image_id` is available; a failed image is a UserError."""
    tries = 0

    def check() -> dict[str, Any]:
        nonlocal tries
        tries += 1
        image = describe_image(ec2, image_id)
        state = image["State"] if image else "missing"
        if state == "available" and image is not None:
            return image
        if state in ("failed", "invalid", "deregistered", "missing", "error"):
            reason = (image or {}).get("StateReason", {}).get("Message", "")
            raise UserError(f"{label}: {image_id} is {state} {reason}".strip())
        out.say(f"{label}: {image_id} {state} ({tries}/{waiter.attempts})")
        raise NotYet(f"{image_id} is {state}")

    return wait_for(check, waiter)
