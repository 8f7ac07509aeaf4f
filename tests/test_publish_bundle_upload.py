"""upload-bundle against moto: checksums, multipart, retries (the clients' one
policy, counted per HTTP send), resume, abort."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from moto.core.models import botocore_stubber

from builder.aws.clients import Clients
from builder.aws.retry import Retries
from builder.bundle.certs import BundleCredentials
from builder.bundle.writer import BundleRequest, BundleResult, bundle_image
from builder.errors import UserError
from builder.publish.bundle_upload import (
    UploadSettings,
    delete_bundle,
    split_location,
    upload_bundle,
)
from builder.steps import Resumable
from tests.aws_fixtures import Sends
from tests.bundle_pki import make_pki

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> BundleResult:
    tmp = tmp_path_factory.mktemp("s3bundle")
    pki = make_pki(tmp / "pki")
    image = tmp / "disk.raw"
    image.write_bytes(os.urandom(25 * MiB))
    creds = BundleCredentials.load(pki.cert, pki.key, pki.ec2_cert)
    return bundle_image(
        BundleRequest(image=image, destination=tmp / "out", prefix="disk.raw",
                      user="123456789012"), creds)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def s3_client(region: str, sends: Sends | None = None,
              sleeps: list[float] | None = None) -> Any:
    """An S3 client as amibake makes them (the one retry policy, on a fake
    clock), whose HTTP sends go through `sends` before moto answers them."""
    session = boto3.Session(region_name=region)
    session.events.unregister("before-send", botocore_stubber)
    session.events.register("before-send", (sends or Sends()).handler)
    retries = Retries(sleep=sleeps.append if sleeps is not None else lambda _s: None)
    return Clients(session, home_region=region, retries=retries).s3()


def network_down(operation: str, key_suffix: str, part: int | None = None,
                 times: int | None = None) -> Any:
    """A `Sends.fail` that loses the connection for matching requests (`times`
    times, or always)."""
    failed: list[str] = []

    def fail(op: str, request: Any) -> None:
        url = urlsplit(str(request.url))
        number = parse_qs(url.query).get("partNumber", [None])[0]
        if (op == operation and url.path.endswith(key_suffix)
                and (part is None or number == str(part))
                and (times is None or len(failed) < times)):
            failed.append(url.path)
            raise EndpointConnectionError(endpoint_url=f"https://injected/{op}")

    return fail


class Recorder:
    """Records the parameters of each call boto3 makes (once per call: the
    retries of a call are HTTP sends, see `Sends`)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("before-parameter-build.s3.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def ops(self, name: str) -> list[dict[str, Any]]:
        return [p for op, p in self.calls if op == name]


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_split_location() -> None:
    assert split_location("bkt") == ("bkt", "")
    assert split_location("bkt/x/y/") == ("bkt", "x/y/")
    with pytest.raises(UserError):
        split_location("/")


def test_upload_creates_private_bucket_in_region(bundle: BundleResult) -> None:
    s3 = s3_client("eu-west-1")
    rec = Recorder(s3)
    result = upload_bundle(s3, bundle.manifest_path, "amibake-bundles/smallpayroll/1.0.0")
    assert result.image_location == "amibake-bundles/smallpayroll/1.0.0/disk.raw.manifest.xml"
    assert result.created_bucket and not result.skipped
    (create,) = rec.ops("CreateBucket")
    assert create["CreateBucketConfiguration"] == {"LocationConstraint": "eu-west-1"}
    assert create["ObjectOwnership"] == "BucketOwnerPreferred"
    assert s3.get_bucket_location(Bucket="amibake-bundles")["LocationConstraint"] == "eu-west-1"
    block = s3.get_public_access_block(Bucket="amibake-bundles")["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                     "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    puts = rec.ops("PutObject")
    files = [*bundle.part_paths, bundle.manifest_path]
    assert sorted(p["Key"] for p in puts) == sorted(
        f"smallpayroll/1.0.0/{f.name}" for f in files)
    assert puts[-1]["Key"].endswith(".manifest.xml")  # the manifest goes last
    for put in puts:
        local = bundle.manifest_path.parent / put["Key"].rsplit("/", 1)[1]
        data = local.read_bytes()
        assert put["ChecksumSHA256"] == b64sha256(data)
        assert put["ACL"] == "aws-exec-read"
        assert put["Metadata"] == {"amibake-sha256": hashlib.sha256(data).hexdigest()}
        got = s3.get_object(Bucket="amibake-bundles", Key=put["Key"])["Body"].read()
        assert got == data


def test_us_east_1_has_no_location_constraint(bundle: BundleResult) -> None:
    s3 = s3_client("us-east-1")
    rec = Recorder(s3)
    upload_bundle(s3, bundle.manifest_path, "use1")
    (create,) = rec.ops("CreateBucket")
    assert "CreateBucketConfiguration" not in create
    assert rec.ops("PutPublicAccessBlock")


def test_bucket_in_other_region_is_refused(bundle: BundleResult) -> None:
    s3_client("us-west-2").create_bucket(
        Bucket="elsewhere", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    s3 = s3_client("eu-west-1")
    with pytest.raises(UserError, match="elsewhere is in us-west-2, not eu-west-1"):
        upload_bundle(s3, bundle.manifest_path, "elsewhere")


MULTIPART = UploadSettings(multipart_threshold=6 * MiB, multipart_chunk=5 * MiB, workers=1)


def test_multipart_with_checksums_and_retried_part(bundle: BundleResult) -> None:
    sends, sleeps = Sends(), []
    # part 2 of the first file loses its connection twice, then gets through
    sends.fail = network_down("UploadPart", "disk.raw.part.00", part=2, times=2)
    s3 = s3_client("eu-west-1", sends, sleeps)
    rec = Recorder(s3)
    upload_bundle(s3, bundle.manifest_path, "multi", settings=MULTIPART)
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.25 and 0 <= sleeps[1] <= 0.5  # backoff
    part00 = [r for r in sends.of("UploadPart") if urlsplit(str(r.url)).path.endswith("part.00")]
    assert len(part00) == 4  # part 1, then part 2 three times: two retries, no more
    creates = rec.ops("CreateMultipartUpload")
    assert len(creates) == len(bundle.part_paths) - 1  # the last part is < 6 MiB
    assert all(c["ChecksumAlgorithm"] == "SHA256" for c in creates)
    part00 = bundle.part_paths[0].read_bytes()
    sent = [p for p in rec.ops("UploadPart") if p["Key"] == "disk.raw.part.00"]
    assert [p["PartNumber"] for p in sent] == [1, 2]
    assert sent[0]["ChecksumSHA256"] == b64sha256(part00[: 5 * MiB])
    assert sent[-1]["ChecksumSHA256"] == b64sha256(part00[5 * MiB :])
    (complete,) = [c for c in rec.ops("CompleteMultipartUpload") if c["Key"] == "disk.raw.part.00"]
    assert [p["ChecksumSHA256"] for p in complete["MultipartUpload"]["Parts"]] == [
        b64sha256(part00[: 5 * MiB]), b64sha256(part00[5 * MiB :])]
    for path in [*bundle.part_paths, bundle.manifest_path]:
        assert s3.get_object(Bucket="multi", Key=path.name)["Body"].read() == path.read_bytes()
    assert s3.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []


def test_failing_multipart_is_aborted(bundle: BundleResult) -> None:
    sends = Sends()
    sends.fail = network_down("UploadPart", "disk.raw.part.01", part=2)
    s3 = s3_client("eu-west-1", sends)
    rec = Recorder(s3)
    with pytest.raises(Resumable, match=r"upload of part 2 of disk\.raw\.part\.01 failed"):
        upload_bundle(s3, bundle.manifest_path, "abort", settings=MULTIPART)
    tries = [r for r in sends.of("UploadPart") if "part.01" in str(r.url)
             and "partNumber=2" in str(r.url)]
    assert len(tries) == Retries().policy.max_attempts  # bounded: one policy, not two stacked
    assert rec.ops("AbortMultipartUpload")
    assert s3.list_multipart_uploads(Bucket="abort").get("Uploads", []) == []
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="abort").get("Contents", [])}
    assert "disk.raw.part.01" not in keys and "disk.raw.manifest.xml" not in keys


def test_crash_between_parts_then_resume_uploads_only_missing(bundle: BundleResult) -> None:
    sends = Sends()
    sends.fail = network_down("PutObject", "disk.raw.part.01")
    s3 = s3_client("eu-west-1", sends)
    rec = Recorder(s3)
    settings = UploadSettings(workers=1)
    with pytest.raises(Resumable, match=r"disk\.raw\.part\.01 failed") as err:
        upload_bundle(s3, bundle.manifest_path, "resume/pre", settings=settings)
    assert "files already uploaded are skipped" in err.value.hint
    # one failing PutObject: max_attempts HTTP sends in all, not botocore's times amibake's
    failed = [r for r in sends.of("PutObject") if str(r.url).endswith("disk.raw.part.01")]
    assert len(failed) == Retries().policy.max_attempts
    present = {o["Key"] for o in s3.list_objects_v2(Bucket="resume").get("Contents", [])}
    assert "pre/disk.raw.manifest.xml" not in present and "pre/disk.raw.part.01" not in present
    assert "pre/disk.raw.part.00" in present

    sends.fail = lambda _op, _r: None
    rec.calls.clear()
    result = upload_bundle(s3, bundle.manifest_path, "resume/pre", settings=settings)
    uploaded = {p["Key"] for p in rec.ops("PutObject")}
    missing = {f"pre/{p.name}" for p in [*bundle.part_paths, bundle.manifest_path]} - present
    assert uploaded == missing == set(result.uploaded)
    assert set(result.skipped) == present
    heads = rec.ops("HeadObject")
    assert heads and all(h["ChecksumMode"] == "ENABLED" for h in heads)


def test_resume_replaces_an_object_with_other_content(bundle: BundleResult) -> None:
    s3 = s3_client("eu-west-1")
    upload_bundle(s3, bundle.manifest_path, "chg")
    s3.put_object(Bucket="chg", Key="disk.raw.part.00", Body=b"x" * 100)
    result = upload_bundle(s3, bundle.manifest_path, "chg")
    assert result.uploaded == ("disk.raw.part.00",)
    assert (s3.get_object(Bucket="chg", Key="disk.raw.part.00")["Body"].read()
            == bundle.part_paths[0].read_bytes())


def test_stale_multipart_uploads_are_aborted(bundle: BundleResult) -> None:
    s3 = s3_client("eu-west-1")
    s3.create_bucket(Bucket="stale", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.create_multipart_upload(Bucket="stale", Key="x/disk.raw.part.03")
    s3.create_multipart_upload(Bucket="stale", Key="other-thing")
    upload_bundle(s3, bundle.manifest_path, "stale/x")
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket="stale").get("Uploads", [])]
    assert left == ["other-thing"]  # only this bundle's stale uploads are aborted


def test_missing_part_is_refused_before_upload(bundle: BundleResult, tmp_path: Path) -> None:
    manifest = tmp_path / bundle.manifest_path.name
    manifest.write_bytes(bundle.manifest_path.read_bytes())
    s3 = s3_client("eu-west-1")
    rec = Recorder(s3)
    with pytest.raises(UserError, match=r"part 0 of 3 is missing"):
        upload_bundle(s3, manifest, "nothing")
    assert rec.calls == []


def test_invalid_bucket_name_is_a_user_error(bundle: BundleResult) -> None:
    s3 = s3_client("eu-west-1")
    rec = Recorder(s3)
    with pytest.raises(UserError, match="invalid bucket name 'Bad_Name'"):
        upload_bundle(s3, bundle.manifest_path, "Bad_Name")
    assert rec.calls == []
    with pytest.raises(UserError, match="invalid bucket name"):
        split_location("ab/prefix")


def test_delete_bundle_by_image_location(bundle: BundleResult) -> None:
    s3 = s3_client("eu-west-1")
    result = upload_bundle(s3, bundle.manifest_path, "gone/smallpayroll/1.0.0")
    s3.put_object(Bucket="gone", Key="smallpayroll/1.0.0/other", Body=b"stays")
    deleted = delete_bundle(s3, result.image_location)
    assert len(deleted) == 4
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="gone").get("Contents", [])]
    assert keys == ["smallpayroll/1.0.0/other"]
    assert delete_bundle(s3, result.image_location) == []  # idempotent
