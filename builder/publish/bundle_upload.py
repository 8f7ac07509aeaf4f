"""upload-bundle: a bundle's parts and manifest to S3, resumable.

- The bucket is created in the client's region if missing (LocationConstraint
  except in us-east-1; object ownership "bucket owner preferred" so the
  `aws-exec-read` ACL that lets EC2 read bundles is accepted) and its public
  access is blocked. A bucket in another region is an error, not a surprise.
- Each file is sent with a SHA-256 checksum S3 verifies (ChecksumSHA256),
  and its hex SHA-256 in the object's metadata. Files above the multipart
  threshold go in multipart uploads (per-part checksums); a failed multipart
  upload is aborted, and stale uploads under the bundle's keys are aborted
  before starting.
- Every request is retried by the client's one retry policy
  (builder/aws/retry.py); a failure worth running again for raises
  `builder.steps.Resumable`.
- Resume: a file already in the bucket with the same size and SHA-256
  (metadata, or the object checksum read with ChecksumMode=ENABLED) is skipped.
- The manifest goes last, so a bundle whose manifest is present is complete.

The S3 client is a parameter (boto3 `s3` client for the target region).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from builder.aws.clients import error_code
from builder.aws.retry import is_retryable
from builder.bundle.reader import part_paths, read_manifest
from builder.errors import UserError
from builder.steps import Resumable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, UploadPartOutputTypeDef

log = logging.getLogger("amibake.publish.bundle_upload")

MiB = 1024 * 1024
META_SHA256 = "amibake-sha256"

T = TypeVar("T")


@dataclass(frozen=True)
class UploadSettings:
    multipart_threshold: int = 64 * MiB
    multipart_chunk: int = 8 * MiB  # S3's minimum is 5 MiB (except the last)
    workers: int = 4
    acl: str | None = "aws-exec-read"


@dataclass(frozen=True)
class UploadResult:
    bucket: str
    key_prefix: str
    manifest_key: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    created_bucket: bool

    @property
    def image_location(self) -> str:
        """What register_image's ImageLocation takes: bucket/prefix/<manifest>."""
        return f"{self.bucket}/{self.manifest_key}"


def split_location(location: str) -> tuple[str, str]:
    """`bucket[/prefix]` → (bucket, "prefix/" or "")."""
    bucket, _, prefix = location.strip("/").partition("/")
    if not bucket:
        raise UserError("no bucket given", hint="--bucket BUCKET[/PREFIX]")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
        raise UserError(
            f"invalid bucket name {bucket!r}",
            hint="3-63 lower-case letters, digits, '-' and '.', starting and ending "
            "with a letter or digit",
        )
    return bucket, (prefix.strip("/") + "/") if prefix.strip("/") else ""


def upload_bundle(
    s3: S3Client,
    manifest_path: Path,
    location: str,
    *,
    settings: UploadSettings = UploadSettings(),
    progress: Callable[[str], None] = lambda _: None,
) -> UploadResult:
    """Upload the parts listed in the manifest, then the manifest."""
    manifest_path = Path(manifest_path)
    _, parsed = read_manifest(manifest_path)
    bucket, prefix = split_location(location)
    files = part_paths(parsed, manifest_path.parent)  # files beside it, never a symlink out
    region = s3.meta.region_name or "us-east-1"
    created = ensure_bucket(s3, bucket, region, settings=settings)
    uploader = _Uploader(s3, bucket, settings)
    uploader.abort_stale(prefix + parsed.name)
    uploaded: list[str] = []
    skipped: list[str] = []

    def one(path: Path) -> None:
        key = prefix + path.name
        if uploader.upload_file(path, key):
            uploaded.append(key)
            progress(f"uploaded s3://{bucket}/{key}")
        else:
            skipped.append(key)
            progress(f"already present: s3://{bucket}/{key}")

    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for future in [pool.submit(one, path) for path in files]:
            future.result()
    one(manifest_path)
    return UploadResult(
        bucket, prefix, prefix + manifest_path.name, tuple(sorted(uploaded)),
        tuple(sorted(skipped)), created,
    )


def bucket_region(s3: S3Client, bucket: str) -> str | None:
    """The region `bucket` is in; None when there is no such bucket; a
    UserError when it exists but is not ours to use (the one bucket check)."""
    try:
        head = s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error_code(exc)
        if status == 403 or code in ("403", "AccessDenied"):
            raise UserError(
                f"bucket {bucket} exists but this account cannot use it",
                hint="bucket names are global: pick another (publish.bucket)",
            ) from exc
        if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
            return None
        raise
    headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return str(headers.get("x-amz-bucket-region") or head.get("BucketRegion") or "us-east-1")


def check_bucket(s3: S3Client, bucket: str, region: str) -> bool:
    """True when `bucket` exists in `region`, False when it does not exist; a
    UserError when it is someone else's or in another region."""
    where = bucket_region(s3, bucket)
    if where is not None and where != region:
        raise UserError(
            f"bucket {bucket} is in {where}, not {region}",
            hint="bundles must be in the region the AMI is registered in",
        )
    return where is not None


def ensure_bucket(
    s3: S3Client,
    bucket: str,
    region: str,
    *,
    settings: UploadSettings = UploadSettings(),
) -> bool:
    """Create `bucket` in `region` with public access blocked if it is
    missing; True when it was created here."""
    if check_bucket(s3, bucket, region):
        return False
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    if settings.acl:
        kwargs["ObjectOwnership"] = "BucketOwnerPreferred"
    try:
        _call(lambda: s3.create_bucket(**kwargs), f"create bucket {bucket}")
    except ClientError as exc:
        code = error_code(exc)
        if code in ("InvalidBucketName", "BucketAlreadyExists", "AccessDenied",
                    "IllegalLocationConstraintException", "InvalidLocationConstraint"):
            raise UserError(
                f"cannot create bucket {bucket} in {region}: {code}",
                hint="bucket names are global, 3-63 lower-case letters, digits, '-' and '.'",
            ) from exc
        raise
    _call(
        lambda: s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        ),
        f"block public access on {bucket}",
    )
    return True


def delete_objects(s3: S3Client, bucket: str, keys: list[str]) -> None:
    """Delete `keys` from `bucket`, 1000 at a time (cleanup of a failed publish)."""
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        if batch:
            s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )


def delete_bundle(s3: S3Client, image_location: str) -> list[str]:
    """Delete the bundle an instance-store AMI was registered from (its
    ImageLocation `bucket/prefix/<name>.manifest.xml`): the parts its manifest
    lists, then the manifest. For prune/gc after deregistering. Returns the
    keys deleted; a manifest already gone deletes nothing."""
    from builder.bundle.manifest_xml import parse

    bucket, _, manifest_key = image_location.partition("/")
    try:
        data = s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            return []
        raise
    parsed = parse(data, f"s3://{image_location}")
    folder = manifest_key.rpartition("/")[0]
    keys = [f"{folder}/{p.filename}" if folder else p.filename for p in parsed.parts]
    delete_objects(s3, bucket, keys)
    delete_objects(s3, bucket, [manifest_key])
    return [*keys, manifest_key]


def _call(call: Callable[[], T], what: str) -> T:
    """One request (retried by the client); a failure worth running again for
    becomes `Resumable`: the files already in the bucket are skipped then."""
    try:
        return call()
    except Exception as exc:
        if is_retryable(exc):
            raise Resumable(
                f"{what} failed: {exc}",
                hint="check the network and S3's status, then run again: "
                "files already uploaded are skipped",
            ) from exc
        raise


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.digest()


class _Uploader:
    def __init__(self, s3: S3Client, bucket: str, settings: UploadSettings) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.settings = settings

    def abort_stale(self, key_prefix: str) -> None:
        """Abort multipart uploads left under this bundle's keys by a crash."""
        resp = _call(
            lambda: self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key_prefix),
            "list multipart uploads",
        )
        for upload in resp.get("Uploads", []):
            self._abort(upload["Key"], upload["UploadId"])

    def _abort(self, key: str, upload_id: str) -> None:
        _call(
            lambda: self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            ),
            f"abort multipart upload of {key}",
        )

    def present(self, key: str, size: int, sha256: bytes) -> bool:
        try:
            head = _call(
                lambda: self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"),
                f"check s3://{self.bucket}/{key}",
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        if head.get("ContentLength") != size:
            return False
        if head.get("Metadata", {}).get(META_SHA256) == sha256.hex():
            return True
        return bool(head.get("ChecksumSHA256") == base64.b64encode(sha256).decode())

    def upload_file(self, path: Path, key: str) -> bool:
        """Upload unless already present; True when it was uploaded."""
        size = path.stat().st_size
        sha256 = _sha256(path)
        if self.present(key, size, sha256):
            return False
        extra: dict[str, Any] = {"Metadata": {META_SHA256: sha256.hex()}}
        if self.settings.acl:
            extra["ACL"] = self.settings.acl
        if size <= self.settings.multipart_threshold:
            body = path.read_bytes()
            _call(
                lambda: self.s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ChecksumSHA256=base64.b64encode(sha256).decode(),
                    **extra,
                ),
                f"upload of s3://{self.bucket}/{key}",
            )
        else:
            self._multipart(path, key, size, extra)
        return True

    def _multipart(self, path: Path, key: str, size: int, extra: dict[str, Any]) -> None:
        created = _call(
            lambda: self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", **extra
            ),
            f"start multipart upload of {key}",
        )
        upload_id = created["UploadId"]
        try:
            done: list[CompletedPartTypeDef] = []
            chunk = max(self.settings.multipart_chunk, 5 * MiB)
            with open(path, "rb", buffering=0) as f:
                for number, offset in enumerate(range(0, size, chunk), start=1):
                    f.seek(offset)
                    data = f.read(chunk)
                    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()

                    def send(number: int = number, data: bytes = data, checksum: str = checksum
                             ) -> UploadPartOutputTypeDef:
                        return self.s3.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id,
                            PartNumber=number, Body=data, ChecksumSHA256=checksum,
                        )

                    resp = _call(send, f"upload of part {number} of {key}")
                    done.append(
                        {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}
                    )
            _call(
                lambda: self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                ),
                f"complete multipart upload of {key}",
            )
        except BaseException:
            try:
                self._abort(key, upload_id)
            except Exception:  # the original error matters more
                log.warning("could not abort multipart upload %s of %s", upload_id, key)
            raise
