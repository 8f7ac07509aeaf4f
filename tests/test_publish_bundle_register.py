"""Instance-store publish: bundle → upload → H6's register/tag/copy/SSM steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.bundle import manifest_xml
from builder.publish.context import InstanceStoreOptions, PublishContext
from builder.publish.run import publish_instance_store
from builder.store import StoredImage
from tests.aws_fixtures import Aws, error_response, quiet
from tests.bundle_pki import Pki, make_pki

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store

BUCKET = "amibake-test-bundles"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def make_ctx(aws: Aws, store: Path, regions: tuple[str, ...] = ("us-east-1",)) -> PublishContext:
    image = StoredImage.load(store / "smallpayroll" / "1.0.0")
    return PublishContext(clients=aws.clients, out=quiet(), image=image,
                          ami_name="smallpayroll-1.0.0", regions=regions)


def options(pki: Pki, workdir: Path) -> InstanceStoreOptions:
    workdir.mkdir(exist_ok=True)
    return InstanceStoreOptions(cert=pki.cert, privatekey=pki.key, ec2cert=pki.ec2_cert,
                                bucket=f"{BUCKET}/bundles", workdir=workdir)


def test_publish_instance_store_registers_manifest_location(
    aws: Aws, store: Path, pki: Pki, tmp_path: Path
) -> None:
    ctx = make_ctx(aws, store, ("us-east-1", "eu-west-1"))
    doc = publish_instance_store(ctx, options(pki, tmp_path / "work"))
    location = f"{BUCKET}/bundles/smallpayroll/1.0.0/smallpayroll-1.0.0.manifest.xml"
    assert doc["bundle"]["image_location"] == location
    (register,) = [c for c in aws.recorder.of("RegisterImage") if not c.params.get("DryRun")]
    params = register.params
    assert params["ImageLocation"] == location
    assert params["RootDeviceName"] == "/dev/sda1"
    assert params["Name"] == "smallpayroll-1.0.0"
    assert "SnapshotId" not in str(params.get("BlockDeviceMappings"))
    home_ami = doc["images"]["us-east-1"]
    assert set(doc["images"]) == {"us-east-1", "eu-west-1"}
    (copy,) = [c for c in aws.recorder.of("CopyImage") if not c.params.get("DryRun")]
    assert copy.params["SourceImageId"] == home_ami
    tags = aws.recorder.of("CreateTags")
    assert any(home_ami in c.params["Resources"] for c in tags)
    ssm = aws.clients.ssm("us-east-1")
    assert ssm.get_parameter(Name="/amibake/smallpayroll/latest")["Parameter"]["Value"] == home_ami
    # the manifest in S3 is a valid signed bundle manifest for the caller's account
    s3 = aws.clients.client("s3", "us-east-1")
    key = location.split("/", 1)[1]
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    parsed = manifest_xml.parse(data, key)
    assert parsed.user == ctx.account and parsed.size == ctx.image.disk.apparent_size
    assert parsed.block_device_mapping == {"ami": "sda1", "root": "/dev/sda1",
                                           "ephemeral0": "sdb"}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {key, *(f"bundles/smallpayroll/1.0.0/{p.filename}" for p in parsed.parts)}
    assert list((tmp_path / "work").iterdir()) == []  # the local bundle is gone

    # publishing the same version again changes nothing
    aws.recorder.clear()
    again = publish_instance_store(make_ctx(aws, store), options(pki, tmp_path / "work"))
    assert again["existing"] and again["images"]["us-east-1"] == home_ami
    assert not aws.recorder.of("PutObject")
    assert not [c for c in aws.recorder.of("RegisterImage") if not c.params.get("DryRun")]


def test_failed_register_cleans_up_bundle_and_bucket(
    aws: Aws, store: Path, pki: Pki, tmp_path: Path
) -> None:
    def fail(model: Any, **_: Any) -> Any:
        if model.name == "RegisterImage":
            return error_response("InvalidManifest", 400)
        return None

    aws.on("before-call.ec2.RegisterImage", fail)
    ctx = make_ctx(aws, store)
    with pytest.raises(Exception, match="InvalidManifest"):
        publish_instance_store(ctx, options(pki, tmp_path / "work"))
    assert aws.recorder.of("PutObject")  # the bundle had been uploaded...
    s3 = aws.clients.client("s3", "us-east-1")
    assert BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]  # ...and is gone
    assert aws.own_images("us-east-1") == []
    assert ctx.ledger == []
    assert list((tmp_path / "work").iterdir()) == []


def test_failure_keeps_a_bucket_it_did_not_create(
    aws: Aws, store: Path, pki: Pki, tmp_path: Path
) -> None:
    s3 = aws.clients.client("s3", "us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="unrelated", Body=b"keep me")
    aws.on("before-call.ec2.RegisterImage",
           lambda model, **_: error_response("InvalidManifest", 400))
    with pytest.raises(Exception, match="InvalidManifest"):
        publish_instance_store(make_ctx(aws, store), options(pki, tmp_path / "work"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["unrelated"]


def test_bad_certificate_fails_before_anything_is_created(
    aws: Aws, store: Path, pki: Pki, tmp_path: Path
) -> None:
    bad = InstanceStoreOptions(cert=pki.cert, privatekey=pki.other_key, ec2cert=pki.ec2_cert,
                               bucket=BUCKET, workdir=tmp_path)
    with pytest.raises(Exception, match="is not the private key of the certificate"):
        publish_instance_store(make_ctx(aws, store), bad)
    assert not aws.recorder.of("CreateBucket") and not aws.recorder.of("PutObject")
