"""The db role's EBS volume for `launch --target aws` (`storage: ebs`).

Found by its tags (builder/db_storage/volume.py) anywhere in the region: the
instance is then started in the volume's zone. None yet: one is made (gp3,
encrypted) in the zone the instance got, and deleted again when the launch
fails. A volume attached to another instance is refused before anything
starts: two servers never share one database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from builder.db_storage.volume import VOLUME_TYPE, volume_size, volume_tags
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.wait import NotYet, Waiter, wait_for

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef, TagTypeDef, VolumeTypeDef

AVAILABLE_WAITER = Waiter("the data volume to be detached", attempts=60, interval=5.0)
GONE = ("deleting", "deleted", "error")


def _tag_filters(m: Manifest, role: str) -> list[FilterTypeDef]:
    return [{"Name": f"tag:{key}", "Values": [value]}
            for key, value in volume_tags(m, role).items()]


def find_volume(ec2: EC2Client, m: Manifest, role: str) -> VolumeTypeDef | None:
    """The role's volume, None if there is none; refused if several or in use."""
    tags = volume_tags(m, role)
    found = [v for v in ec2.describe_volumes(Filters=_tag_filters(m, role))["Volumes"]
             if v.get("State") not in GONE]
    shown = ", ".join(f"{k}={v}" for k, v in tags.items())
    if len(found) > 1:
        ids = ", ".join(sorted(f"{v['VolumeId']} ({v['AvailabilityZone']})" for v in found))
        raise UserError(f"{len(found)} volumes are tagged {shown}: {ids}",
                        hint="keep the one holding the database; remove the tags from the others")
    if not found:
        return None
    volume = found[0]
    for att in volume.get("Attachments", []):
        if att.get("State") in ("attaching", "attached"):
            raise UserError(
                f"the data volume {volume['VolumeId']} ({shown}) is attached to "
                f"{att.get('InstanceId')}: another db instance of this stack is running",
                hint="stop or terminate it first: one database, one server")
    return volume


def create_volume(ec2: EC2Client, m: Manifest, role: str, zone: str) -> str:
    tags: list[TagTypeDef] = [{"Key": "Name", "Value": f"{m.name}-{role}-data"}]
    tags += [{"Key": k, "Value": v} for k, v in volume_tags(m, role).items()]
    return ec2.create_volume(
        AvailabilityZone=zone, Size=volume_size(m), VolumeType=VOLUME_TYPE, Encrypted=True,
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )["VolumeId"]


def delete_volume(ec2: EC2Client, volume_id: str, waiter: Waiter = AVAILABLE_WAITER) -> None:
    """Delete a volume this launch made, once no instance holds it."""
    def detached() -> None:
        (volume,) = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        if volume.get("State") != "available":
            raise NotYet(f"{volume_id} is {volume.get('State')}")

    wait_for(detached, waiter)
    ec2.delete_volume(VolumeId=volume_id)
