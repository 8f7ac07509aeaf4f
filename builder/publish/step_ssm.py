"""Points `<prefix>/<name>/<version>` and `<prefix>/<name>/latest` at the AMIs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from packaging.version import InvalidVersion, Version

from builder.aws.clients import error_code
from builder.publish.context import TAG_VERSION, PublishContext
from builder.publish.images import describe_image, tags_of
from builder.steps import Outcome

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


def ssm_name(prefix: str, name: str, leaf: str) -> str:
    return f"{prefix.rstrip('/')}/{name}/{leaf}"


def _version_of(ec2: EC2Client, image_id: str) -> Version | None:
    image = describe_image(ec2, image_id)
    try:
        return Version(tags_of(image or {}).get(TAG_VERSION, ""))
    except InvalidVersion:
        return None


class SsmParametersStep:
    """`<prefix>/<name>/<version>` and `<prefix>/<name>/latest` (aws:ec2:image) per region.

    `latest` only moves forward: publishing an older version leaves it alone.
    Cleanup restores the previous `latest` and deletes the version parameter.
    """

    name = "ssm-parameters"

    def __init__(self) -> None:
        self.previous_latest: dict[str, str | None] = {}

    def describe(self, ctx: PublishContext) -> str:
        return "set " + ", ".join(
            ssm_name(ctx.ssm_prefix, ctx.image.name, leaf) for leaf in (ctx.image.version, "latest")
        ) + f" in {', '.join(ctx.regions)}"

    def run(self, ctx: PublishContext) -> None:
        version = Version(ctx.image.version)
        for region in ctx.regions:
            ssm = ctx.clients.ssm(region)
            image_id = ctx.image_ids[region]
            names = [ssm_name(ctx.ssm_prefix, ctx.image.name, ctx.image.version)]
            latest = ssm_name(ctx.ssm_prefix, ctx.image.name, "latest")
            try:
                previous: str | None = ssm.get_parameter(Name=latest)["Parameter"]["Value"]
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    raise
                previous = None
            current = _version_of(ctx.clients.ec2(region), previous) if previous else None
            if current is None or current <= version:
                names.append(latest)
                self.previous_latest[region] = previous
            for name in names:
                ssm.put_parameter(Name=name, Value=image_id, Type="String",
                                  DataType="aws:ec2:image", Overwrite=True)
                ctx.track(self.name, "ssm-parameter", region, name)
                ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name,
                                         Tags=[{"Key": k, "Value": v} for k, v in ctx.tags().items()
                                               if k != "Name" and v != ""])
                ctx.ssm_parameters.append(f"{region}:{name}")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        for res in [r for r in ctx.ledger if r.step == self.name]:
            ssm = ctx.clients.ssm(res.region)
            previous = self.previous_latest.get(res.region)
            if res.ident.endswith("/latest") and previous:
                ssm.put_parameter(Name=res.ident, Value=previous, Type="String",
                                  DataType="aws:ec2:image", Overwrite=True)
            else:
                try:
                    ssm.delete_parameter(Name=res.ident)
                except ClientError as exc:
                    if error_code(exc) != "ParameterNotFound":
                        raise
            ctx.untrack(res.kind, res.region, res.ident)
