"""The typed context publishing steps share (the image is the store's StoredImage)."""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.aws.clients import Clients
from builder.bundle.certs import BundleCredentials
from builder.bundle.writer import BundleResult
from builder.errors import UserError
from builder.output import Output
from builder.store import StoredImage

if TYPE_CHECKING:
    from mypy_boto3_ec2.type_defs import TagTypeDef

    from builder.publish.bundle_upload import UploadResult, UploadSettings

TAG_NAME = "amibake:name"
TAG_VERSION = "amibake:version"
TAG_BUILD_ID = "amibake:build-id"
#: image.json's disk.digest (`algorithm:hex`, builder.disk_digest)
TAG_DISK_DIGEST = "amibake:disk-digest"
#: the plain sha256 hex of the disk, on AMIs published before the digest had a name
TAG_DISK_SHA256 = "amibake:disk-sha256"
TAG_INPUTS_DIGEST = "amibake:inputs-digest"
TAG_ROLES = "amibake:roles"
TAG_BUILDER = "amibake:builder-version"
TAG_APP_COMMIT = "amibake:app-commit"
TAG_APP_TREE = "amibake:app-tree"
TAG_COMPLETE = "amibake:complete"
#: on an instance-store AMI (home region): its bundle, `bucket/prefix/<prefix>.manifest.xml`
TAG_BUNDLE = "amibake:bundle-location"


@dataclass(frozen=True)
class EbsRoot:
    """The root device comes from an EBS snapshot."""

    snapshot_id: str


@dataclass(frozen=True)
class BundleRoot:
    """The root device comes from an instance-store bundle manifest in S3."""

    image_location: str  # bucket/prefix/image.manifest.xml


@dataclass(frozen=True)
class Resource:
    """Something a run created, and how to delete it by hand."""

    step: str
    kind: str  # "snapshot" | "image" | "ssm-parameter" | anything a step adds
    region: str
    ident: str

    def delete_command(self) -> str:
        if self.kind == "snapshot":
            return f"aws ec2 delete-snapshot --region {self.region} --snapshot-id {self.ident}"
        if self.kind == "image":
            return f"aws ec2 deregister-image --region {self.region} --image-id {self.ident}"
        if self.kind == "ssm-parameter":
            return f"aws ssm delete-parameter --region {self.region} --name {self.ident}"
        if self.kind == "s3-object":
            return f"aws s3 rm --region {self.region} s3://{self.ident}"
        return f"delete {self.kind} {self.ident} in {self.region}"


@dataclass(frozen=True)
class InstanceStoreOptions:
    """What an instance-store publish needs besides the PublishContext."""

    cert: Path  # user's X.509 certificate (PEM)
    privatekey: Path  # its private key
    ec2cert: Path  # EC2's bundling certificate for the home region
    bucket: str  # bucket[/prefix]; the image's name/version is appended
    workdir: Path | None = None  # where the bundle is written (default: a temp dir)
    upload: UploadSettings | None = None  # default: bundle_upload.UploadSettings()


@dataclass
class BundleState:
    """What the instance-store prevalidate, bundle and upload steps share."""

    creds: BundleCredentials | None = None
    bundle: BundleResult | None = None
    upload: UploadResult | None = None


def new_build_id() -> str:
    return "b-" + secrets.token_hex(6)


@dataclass
class PublishContext:
    """State shared by the steps of one publish run (mutable on purpose)."""

    clients: Clients
    out: Output
    image: StoredImage
    ami_name: str
    regions: tuple[str, ...]  # first is home
    ssm_prefix: str = "/amibake"
    kms_key_ids: dict[str, str] = field(default_factory=dict)
    backing: str = "ebs"
    build_id: str = field(default_factory=new_build_id)
    upload_concurrency: int = 8
    dry_run: bool = False
    stack: ExitStack = field(default_factory=ExitStack)
    # filled in by steps:
    account: str = ""
    root: EbsRoot | BundleRoot | None = None
    image_ids: dict[str, str] = field(default_factory=dict)  # region → AMI id
    snapshot_ids: dict[str, list[str]] = field(default_factory=dict)  # region → snapshots
    ssm_parameters: list[str] = field(default_factory=list)
    existing: dict[str, str] = field(default_factory=dict)  # already published: region → AMI
    ledger: list[Resource] = field(default_factory=list)
    upload: Any = None  # snapshot_upload.UploadResult when the EBS upload ran
    stop: bool = False

    @property
    def home(self) -> str:
        return self.regions[0]

    def track(self, step: str, kind: str, region: str, ident: str) -> Resource:
        res = Resource(step, kind, region, ident)
        self.ledger.append(res)
        return res

    def untrack(self, kind: str, region: str, ident: str) -> None:
        self.ledger = [
            r for r in self.ledger
            if not (r.kind == kind and r.region == region and r.ident == ident)
        ]

    def tags(self) -> dict[str, str]:
        """Tags every AMI and snapshot of this run carries."""
        img = self.image
        return {
            "Name": self.ami_name,
            "Version": img.version,
            "Role": ",".join(img.roles),
            TAG_NAME: img.name,
            TAG_VERSION: img.version,
            TAG_ROLES: ",".join(img.roles),
            TAG_INPUTS_DIGEST: img.inputs_digest,
            TAG_DISK_DIGEST: img.disk.digest,
            TAG_BUILD_ID: self.build_id,
            TAG_BUILDER: img.builder_version,
            TAG_APP_COMMIT: app_commit(img.app),
            TAG_APP_TREE: str(img.app.get("tree_digest") or ""),
        }

    def tag_list(self, extra: dict[str, str] | None = None) -> list[TagTypeDef]:
        tags = dict(self.tags())
        tags.update(extra or {})
        return [{"Key": k, "Value": v} for k, v in tags.items() if v != ""]


def app_commit(app: dict[str, Any]) -> str:
    """The app's exact source for a tag: its commit (`+dirty` when baked from a
    dirty checkout), or `sha256:<hex>` of its tarball; '' for sample/none."""
    if app.get("commit"):
        return str(app["commit"]) + ("+dirty" if app.get("dirty") else "")
    if app.get("tarball_sha256"):
        return f"sha256:{app['tarball_sha256']}"
    return ""


def ami_name(template: str, name: str, version: str, arch: str) -> str:
    try:
        return template.format(name=name, version=version, arch=arch)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"image.name_template {template!r} cannot be filled in: {exc}",
            hint="use only {name}, {version} and {arch}",
        ) from exc
