"""The life of published AMIs: deprecate, prune old versions, gc crashed runs.

Each function lists its `Actions` first and carries them out unless `dry_run`.
Images are found by their amibake tags (`amibake:name`, `amibake:version`,
`amibake:build-id`, `amibake:complete`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from packaging.version import InvalidVersion, Version

from builder.aws.clients import Clients, error_code
from builder.errors import UserError
from builder.publish.actions import Actions
from builder.publish.bundle_upload import delete_bundle
from builder.publish.context import (
    TAG_BUILD_ID,
    TAG_BUNDLE,
    TAG_COMPLETE,
    TAG_NAME,
    TAG_VERSION,
)
from builder.publish.images import (
    delete_image_and_snapshots,
    delete_snapshot,
    snapshots_of,
    tags_of,
)
from builder.publish.step_ssm import ssm_name

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef, ImageTypeDef
    from mypy_boto3_ssm import SSMClient


def find_images(ec2: EC2Client, name: str, version: str | None = None) -> list[ImageTypeDef]:
    filters: list[FilterTypeDef] = [{"Name": f"tag:{TAG_NAME}", "Values": [name]}]
    if version is not None:
        filters.append({"Name": f"tag:{TAG_VERSION}", "Values": [version]})
    return list(ec2.describe_images(Owners=["self"], Filters=filters)["Images"])


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def parse_when(text: str) -> dt.datetime:
    """`2027-01-31` or `2027-01-31T12:00[:00][Z|+hh:mm]` → aware UTC datetime."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UserError(f"--at {text!r} is not a date", hint="use YYYY-MM-DD or ISO 8601") from exc
    return _utc(when)


def image_bundle(image: Any) -> str | None:
    """The S3 bundle an instance-store AMI was registered from: its
    ImageLocation (what EC2 reports, also for region copies), else the
    `amibake:bundle-location` tag the register step puts on the home AMI."""
    location = image.get("ImageLocation")
    if image.get("RootDeviceType") == "instance-store" and location:
        return str(location)
    return tags_of(image).get(TAG_BUNDLE) or None


def _delete_deregistered_bundle(clients: Clients, region: str, location: str) -> list[str]:
    """Delete a deregistered AMI's bundle objects (idempotent); a failure says
    exactly what is left to delete by hand."""
    try:
        return delete_bundle(clients.s3(region), location)
    except ClientError as exc:
        folder = location.rpartition("/")[0]
        raise UserError(
            f"could not delete the bundle s3://{location} ({error_code(exc)}); "
            "its AMI is already deregistered",
            hint=f"delete it by hand: aws s3 rm --recursive s3://{folder}/",
        ) from exc


# ----------------------------------------------------------------- deprecate


def deprecate(
    clients: Clients,
    regions: Sequence[str],
    name: str,
    version: str,
    at: dt.datetime,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> Actions:
    at = _utc(at)
    now = _utc(now or dt.datetime.now(dt.UTC))
    if at <= now:
        raise UserError(f"deprecation date {at.isoformat()} is in the past",
                        hint="AWS accepts only future dates; pick a later --at")
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    actions = Actions()
    for region in regions:
        for image in find_images(clients.ec2(region), name, version):
            actions.add("change", "image", region, image["ImageId"], f"deprecate at {stamp}")
    if not actions.actions:
        raise UserError(f"no published AMI of {name} {version} in {', '.join(regions)}",
                        hint="check the name and version (amibake amis prune --dry-run lists them)")
    if not dry_run:
        for action in actions.actions:
            clients.ec2(action.region).enable_image_deprecation(
                ImageId=action.ident, DeprecateAt=stamp
            )
    return actions


# --------------------------------------------------------------------- prune


def _version(image: ImageTypeDef) -> Version | None:
    try:
        return Version(tags_of(image).get(TAG_VERSION, ""))
    except InvalidVersion:
        return None


def images_in_use(ec2: EC2Client, image_ids: Sequence[str],
                  ssm: SSMClient | None = None) -> dict[str, str]:
    """AMI id → why it is in use (an instance or a launch template).

    A launch template may name its image as `resolve:ssm:<parameter>`; that
    parameter's current value counts as used (when `ssm` is given).
    """
    used: dict[str, str] = {}
    if not image_ids:
        return used
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "image-id", "Values": list(image_ids)},
                 {"Name": "instance-state-name", "Values": LIVE_STATES}])
    for page in pages:
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                used.setdefault(inst["ImageId"], f"used by instance {inst['InstanceId']}")
    wanted = set(image_ids)
    for templates in ec2.get_paginator("describe_launch_templates").paginate():
        for tpl in templates["LaunchTemplates"]:
            versions = ec2.describe_launch_template_versions(
                LaunchTemplateId=tpl["LaunchTemplateId"])["LaunchTemplateVersions"]
            for ver in versions:
                ami = ver.get("LaunchTemplateData", {}).get("ImageId")
                if ssm is not None and isinstance(ami, str) and ami.startswith("resolve:ssm:"):
                    ami = _ssm_value(ssm, ami.removeprefix("resolve:ssm:"))
                if ami in wanted:
                    used.setdefault(ami, f"used by launch template {tpl['LaunchTemplateName']}")
    return used


def _ssm_value(ssm: SSMClient, name: str) -> str | None:
    try:
        return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


def prune(
    clients: Clients,
    regions: Sequence[str],
    name: str,
    keep: int,
    *,
    ssm_prefix: str = "/amibake",
    dry_run: bool = False,
) -> Actions:
    """Deregister all but the newest `keep` versions everywhere, deleting their
    snapshots (EBS) or S3 bundles (instance-store).

    Never touches the version SSM `latest` points to, nor one an instance or a
    launch template uses (in any region: a version is kept or pruned as a whole).
    """
    if keep < 1:
        raise UserError("--keep must be at least 1")
    by_region: dict[str, list[ImageTypeDef]] = {
        r: find_images(clients.ec2(r), name) for r in regions
    }
    versions: dict[Version, list[tuple[str, ImageTypeDef]]] = {}
    for region, images in by_region.items():
        for image in images:
            ver = _version(image)
            if ver is not None:
                versions.setdefault(ver, []).append((region, image))
    protected: dict[Version, str] = {}
    latest_param = ssm_name(ssm_prefix, name, "latest")
    for region in regions:
        latest = _ssm_value(clients.ssm(region), latest_param)
        ids = [img["ImageId"] for img in by_region[region]]
        used = images_in_use(clients.ec2(region), ids, clients.ssm(region))
        for ver, entries in versions.items():
            for reg, image in entries:
                if reg != region:
                    continue
                if image["ImageId"] == latest:
                    protected.setdefault(ver, f"SSM {latest_param} points to it")
                if image["ImageId"] in used:
                    protected.setdefault(ver, used[image["ImageId"]])
    ordered = sorted(versions, reverse=True)
    actions = Actions()
    for index, ver in enumerate(ordered):
        entries = versions[ver]
        if index < keep or ver in protected:
            reason = f"newest {keep}" if index < keep else protected[ver]
            for region, image in entries:
                actions.add("keep", "image", region, image["ImageId"], f"{ver}: {reason}")
            continue
        for region, image in entries:
            actions.add("delete", "image", region, image["ImageId"], f"{ver}")
            for snap in snapshots_of(image):
                actions.add("delete", "snapshot", region, snap, f"{ver}")
            location = image_bundle(image)
            if location:
                actions.add("delete", "s3-bundle", region, location, f"{ver}")
            param = ssm_name(ssm_prefix, name, str(ver))
            if _ssm_value(clients.ssm(region), param) == image["ImageId"]:
                actions.add("delete", "ssm-parameter", region, param, f"{ver}")
    if not dry_run:
        _execute_deletes(clients, actions)
    return actions


def _execute_deletes(clients: Clients, actions: Actions) -> None:
    images = actions.of("delete")
    for action in images:
        if action.kind == "image":
            snaps = tuple(a.ident for a in images
                          if a.kind == "snapshot" and a.region == action.region
                          and a.reason == action.reason)
            delete_image_and_snapshots(clients.ec2(action.region), action.ident, snaps)
        elif action.kind == "snapshot" and not any(
            a.kind == "image" and a.region == action.region and a.reason == action.reason
            for a in images
        ):
            delete_snapshot(clients.ec2(action.region), action.ident)
        elif action.kind == "s3-bundle":  # after its image (listed in that order)
            _delete_deregistered_bundle(clients, action.region, action.ident)
        elif action.kind == "ssm-parameter":
            clients.ssm(action.region).delete_parameter(Name=action.ident)


# ------------------------------------------------------------------------ gc


def _age(created: Any, now: dt.datetime) -> float:
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    if not isinstance(created, dt.datetime):
        return float("inf")
    return (now - _utc(created)).total_seconds()


def gc(
    clients: Clients,
    regions: Sequence[str],
    *,
    min_age_seconds: float = 3600.0,
    build_id: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> Actions:
    """Remove AMIs, snapshots and instance-store bundles of runs that never finished.

    A resource is a leftover when it carries an `amibake:build-id` tag but not
    `amibake:complete=true`, and is older than `min_age_seconds` (so a run in
    progress elsewhere is left alone). Snapshots still used by a complete AMI
    are never touched.
    """
    now = _utc(now or dt.datetime.now(dt.UTC))
    tag_filter: FilterTypeDef = ({"Name": f"tag:{TAG_BUILD_ID}", "Values": [build_id]} if build_id
                  else {"Name": "tag-key", "Values": [TAG_BUILD_ID]})
    actions = Actions()
    for region in regions:
        ec2 = clients.ec2(region)
        images = ec2.describe_images(Owners=["self"], Filters=[tag_filter])["Images"]
        all_images = ec2.describe_images(Owners=["self"])["Images"]
        kept_snaps: set[str] = set()
        doomed_snaps: set[str] = set()
        for image in images:
            tags = tags_of(image)
            old = _age(image.get("CreationDate"), now) >= min_age_seconds
            leftover = tags.get(TAG_COMPLETE) != "true" and old
            if leftover:
                bid = tags.get(TAG_BUILD_ID, "")
                actions.add("delete", "image", region, image["ImageId"], f"build {bid}")
                for snap in snapshots_of(image):
                    actions.add("delete", "snapshot", region, snap, f"build {bid}")
                    doomed_snaps.add(snap)
                location = image_bundle(image)
                if location:
                    actions.add("delete", "s3-bundle", region, location, f"build {bid}")
        doomed_images = {a.ident for a in actions.actions
                         if a.region == region and a.kind == "image"}
        for image in all_images:
            if image["ImageId"] not in doomed_images:
                kept_snaps.update(snapshots_of(image))
        snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[tag_filter])["Snapshots"]
        for found in snaps:
            sid = found["SnapshotId"]
            tags = tags_of(found)
            if sid in kept_snaps or sid in doomed_snaps or tags.get(TAG_COMPLETE) == "true":
                continue
            if _age(found.get("StartTime"), now) >= min_age_seconds:
                actions.add("delete", "snapshot", region, sid,
                            f"build {tags.get(TAG_BUILD_ID, '')}")
    if not dry_run:
        for action in actions.of("delete"):
            if action.kind == "image":
                delete_image_and_snapshots(clients.ec2(action.region), action.ident)
        for action in actions.of("delete"):
            if action.kind == "s3-bundle":
                _delete_deregistered_bundle(clients, action.region, action.ident)
        for action in actions.of("delete"):
            if action.kind == "snapshot":
                delete_snapshot(clients.ec2(action.region), action.ident)
    return actions
