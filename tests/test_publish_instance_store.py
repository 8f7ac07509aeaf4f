"""Instance-store publishing wired into the CLI: `amibake publish` (manifest
`backing: instance-store` or `--backing instance-store`), `bake --target aws`'s
call point, and the life cycle (prune, gc) deleting the bundles in S3.

End to end against moto's HTTP server (--endpoint-url); the requests boto3
sends are recorded on the CLI's own session (moto drops ImageLocation,
BootMode and the block device mappings of RegisterImage).
"""

from __future__ import annotations

import argparse
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

import builder.aws.clients as aws_clients
from builder.aws.clients import AwsTarget
from builder.bundle import manifest_xml
from builder.cli import main
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.output import Output
from builder.publish.context import TAG_BUNDLE, InstanceStoreOptions, PublishContext
from builder.publish.lifecycle import gc, image_bundle
from builder.publish.run import instance_store_steps, publish
from builder.publish.snapshot_upload import BLOCK_SIZE
from builder.store import StoredImage
from tests.aws_fixtures import (
    AWS_ENV,
    DISK_BLOCKS,
    ROOT,
    Aws,
    Recorder,
    error_response,
    is_dry_run,
    make_stored_image,
    quiet,
)
from tests.bundle_pki import Pki, make_pki

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store

MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"
BUCKET = "amibake-cli-bundles"
PREFIX = "releases"


def location(version: str) -> str:
    return f"{BUCKET}/{PREFIX}/smallpayroll/{version}/smallpayroll-{version}.manifest.xml"


class Cli:
    """The CLI against a moto server, with every request it sends recorded."""

    def __init__(self, endpoint: str, recorder: Recorder, hooks: list[tuple[str, Any]]) -> None:
        self.endpoint = endpoint
        self.recorder = recorder
        self.hooks = hooks

    def s3(self) -> Any:
        return boto3.client("s3", region_name="us-east-1", endpoint_url=self.endpoint)

    def ec2(self, region: str) -> Any:
        return boto3.client("ec2", region_name=region, endpoint_url=self.endpoint)

    def ssm(self, region: str) -> Any:
        return boto3.client("ssm", region_name=region, endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> set[str]:
        try:
            found = self.s3().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        except self.s3().exceptions.NoSuchBucket:
            return set()
        return {o["Key"] for o in found}

    def registers(self) -> list[dict[str, Any]]:
        return [c.params for c in self.recorder.of("RegisterImage")]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    # moto's state is per process: start from an empty account, leave one behind
    reset = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset).close()
    recorder = Recorder()
    hooks: list[tuple[str, Any]] = []
    original = aws_clients.make_session

    def recorded_session(target: aws_clients.AwsTarget) -> boto3.Session:
        session = original(target)
        session.events.register("provide-client-params", recorder.handler)
        for event, handler in hooks:
            session.events.register(event, handler)
        return session

    monkeypatch.setattr(aws_clients, "make_session", recorded_session)
    try:
        yield Cli(f"http://{host}:{port}", recorder, hooks)
    finally:
        urllib.request.urlopen(reset).close()
        server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def key_args(pki: Pki) -> list[str]:
    return ["--cert", str(pki.cert), "--privatekey", str(pki.key), "--ec2cert", str(pki.ec2_cert)]


def instance_store_manifest(tmp_path: Path) -> Path:
    """The seed manifest with `backing: instance-store` and a publish bucket."""
    text = MANIFEST.read_text()
    assert text.count("  backing: ebs\n") == 1 and text.count("  ssm_prefix: /amibake\n") == 1
    text = text.replace("  backing: ebs\n", "  backing: instance-store\n")
    text = text.replace("  ssm_prefix: /amibake\n",
                        f"  ssm_prefix: /amibake\n  bucket: {BUCKET}/{PREFIX}\n")
    path = tmp_path / "smallpayroll.yaml"
    path.write_text(text)
    assert load_manifest(path).image.backing == "instance-store"
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured
    doc: dict[str, Any] = json.loads(captured.out)
    return doc


def test_manifest_backing_publishes_bundle_registers_tags_and_is_idempotent(
    cli: Cli, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "images"
    make_stored_image(store)
    monkeypatch.setenv("AMIBAKE_STORE", str(store))  # no --images: default_store_root()
    manifest = str(instance_store_manifest(tmp_path))
    common = [manifest, "--endpoint-url", cli.endpoint, *key_args(pki),
              "--bundle-dir", str(tmp_path)]

    plan = run_json(capsys, "publish", *common, "--dry-run")
    assert plan["published"] is False and plan["backing"] == "instance-store"
    assert any(line.startswith("bundle:") for line in plan["actions"])
    assert any(f"s3://{BUCKET}/{PREFIX}/smallpayroll/1.0.0/" in line for line in plan["actions"])
    assert not any("upload-snapshot" in line for line in plan["actions"])
    assert not cli.recorder.of("CreateBucket") and not cli.recorder.of("PutObject")

    doc = run_json(capsys, "publish", *common)
    assert doc["published"] is True and doc["backing"] == "instance-store"
    assert doc["bundle"]["image_location"] == location("1.0.0")
    home = doc["images"]["us-east-1"]
    assert set(doc["images"]) == {"us-east-1", "eu-west-1"}
    assert not cli.recorder.of("StartSnapshot")  # not the EBS path

    # the bundle: the parts its (signed, parseable) manifest lists, and the manifest
    key = location("1.0.0").split("/", 1)[1]
    data = cli.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    parsed = manifest_xml.parse(data, key)
    assert parsed.size == StoredImage.load(store / "smallpayroll" / "1.0.0").disk.apparent_size
    folder = f"{PREFIX}/smallpayroll/1.0.0/"
    assert cli.keys() == {key, *(folder + p.filename for p in parsed.parts)}
    assert len(parsed.parts) >= 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("amibake-bundle-")] == []

    # the RegisterImage request boto3 sent (moto drops most of it)
    (register,) = [p for p in cli.registers() if not p.get("DryRun")]
    assert register["ImageLocation"] == location("1.0.0")
    assert register["RootDeviceName"] == "/dev/sda1"
    assert register["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb",
                                                "VirtualName": "ephemeral0"}]
    assert "BootMode" not in register  # UEFI needs an EBS root
    assert register["VirtualizationType"] == "hvm" and register["ImdsSupport"] == "v2.0"
    assert register["Architecture"] == "x86_64" and register["Name"] == "smallpayroll-1.0.0"
    (spec,) = register["TagSpecifications"]
    sent = {t["Key"]: t["Value"] for t in spec["Tags"]}
    assert sent[TAG_BUNDLE] == location("1.0.0") and sent["amibake:version"] == "1.0.0"

    # tags as EC2 keeps them, SSM parameters in every region
    (image,) = cli.ec2("us-east-1").describe_images(ImageIds=[home])["Images"]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["Name"] == "smallpayroll-1.0.0" and tags["amibake:complete"] == "true"
    assert tags[TAG_BUNDLE] == location("1.0.0")
    for region, ami in doc["images"].items():
        ssm = cli.ssm(region)
        for leaf in ("latest", "1.0.0"):
            param = ssm.get_parameter(Name=f"/amibake/smallpayroll/{leaf}")["Parameter"]
            assert param["Value"] == ami
    (put,) = [c.params for c in cli.recorder.of("PutParameter")
              if c.params["Name"].endswith("/latest") and home == c.params["Value"]]
    assert put["DataType"] == "aws:ec2:image"

    # the same version again: nothing uploaded, nothing registered
    cli.recorder.clear()
    again = run_json(capsys, "publish", *common)
    assert again["existing"] is True and again["images"] == doc["images"]
    assert not cli.recorder.of("PutObject") and not cli.recorder.of("CreateMultipartUpload")
    assert not [p for p in cli.registers() if not p.get("DryRun")]


def test_backing_flag_failure_before_register_removes_uploaded_objects(
    cli: Cli, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "images"
    make_stored_image(store)
    cli.s3().create_bucket(Bucket=BUCKET)
    cli.s3().put_object(Bucket=BUCKET, Key="unrelated", Body=b"keep me")

    def fail_register(context: dict[str, Any], **_: Any) -> Any:
        return None if is_dry_run(context) else error_response("InvalidManifest", 400)

    cli.hooks.append(("before-call.ec2.RegisterImage", fail_register))
    # the seed manifest says backing: ebs; --backing overrides it, --bucket gives the bucket
    code = main(["publish", str(MANIFEST), "--images", str(store), "--endpoint-url",
                 cli.endpoint, "--backing", "instance-store", "--bucket", f"{BUCKET}/{PREFIX}",
                 *key_args(pki), "--bundle-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("amibake: error:") and "InvalidManifest" in err[-1]
    assert cli.recorder.of("PutObject")  # the bundle had reached S3 ...
    assert not cli.recorder.of("StartSnapshot")
    assert cli.keys() == {"unrelated"}  # ... and only what was there before is left
    assert cli.ec2("us-east-1").describe_images(Owners=["self"])["Images"] == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("amibake-bundle-")] == []


def test_instance_store_needs_a_bucket_and_keys(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("EC2_CERT", "EC2_PRIVATE_KEY", "EC2_BUNDLE_CERT"):
        monkeypatch.delenv(var, raising=False)
    store = tmp_path / "images"
    make_stored_image(store)
    base = ["publish", str(MANIFEST), "--images", str(store), "--endpoint-url", cli.endpoint,
            "--backing", "instance-store"]
    assert main(base) == 1
    assert "publish.bucket" in capsys.readouterr().err
    assert main([*base, "--bucket", BUCKET]) == 1
    assert "--cert is required" in capsys.readouterr().err
    assert not cli.recorder.of("PutObject") and not cli.recorder.of("RegisterImage")


def test_prune_deletes_the_bundles_of_pruned_versions(
    cli: Cli, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "images"
    make_stored_image(store, version="1.0.0")
    make_stored_image(store, version="2.0.0", seed=11)
    manifest = str(instance_store_manifest(tmp_path))
    common = ["--images", str(store), "--endpoint-url", cli.endpoint, *key_args(pki)]
    old = run_json(capsys, "publish", manifest, "--version", "1.0.0", *common)
    new = run_json(capsys, "publish", manifest, "--version", "2.0.0", *common)
    old_folder, new_folder = (f"{PREFIX}/smallpayroll/{v}/" for v in ("1.0.0", "2.0.0"))
    old_keys, new_keys = cli.keys(old_folder), cli.keys(new_folder)
    assert old_keys and new_keys

    region_args = ["--manifest", manifest, "--endpoint-url", cli.endpoint]
    plan = run_json(capsys, "amis", "prune", "smallpayroll", "--keep", "1", "--dry-run",
                    *region_args)
    bundles = [a for a in plan["actions"] if a["kind"] == "s3-bundle"]
    assert [(a["verb"], a["ident"]) for a in bundles] == [("delete", location("1.0.0"))]
    assert cli.keys(old_folder) == old_keys  # a dry run deletes nothing

    pruned = run_json(capsys, "amis", "prune", "smallpayroll", "--keep", "1", *region_args)
    deleted = {(a["kind"], a["ident"]) for a in pruned["actions"] if a["verb"] == "delete"}
    assert ("s3-bundle", location("1.0.0")) in deleted
    assert {("image", ami) for ami in old["images"].values()} <= deleted
    assert cli.keys(old_folder) == set()
    assert cli.keys(new_folder) == new_keys  # the kept version's bundle stays
    for region, ami in new["images"].items():
        owned = [i["ImageId"] for i in cli.ec2(region).describe_images(Owners=["self"])["Images"]]
        assert owned == [ami]
    # pruning again finds nothing left to delete
    again = run_json(capsys, "amis", "prune", "smallpayroll", "--keep", "1", *region_args)
    assert all(a["verb"] == "keep" for a in again["actions"])


def test_gc_deletes_the_bundle_of_a_crashed_run(aws: Aws, store: Path, pki: Pki,
                                                tmp_path: Path) -> None:
    image = StoredImage.load(store / "smallpayroll" / "1.0.0")
    ctx = PublishContext(clients=aws.clients, out=quiet(), image=image,
                         ami_name="smallpayroll-1.0.0", regions=("us-east-1",))
    options = InstanceStoreOptions(cert=pki.cert, privatekey=pki.key, ec2cert=pki.ec2_cert,
                                   bucket=f"{BUCKET}/{PREFIX}", workdir=tmp_path)
    ctx.backing = "instance-store"
    # a run that died after register and tag (moto drops RegisterImage's
    # TagSpecifications, so the tag step stands in for them): no SSM, no
    # finalize, no cleanup
    steps = instance_store_steps(options)
    assert [s.name for s in steps[:5]] == ["prevalidate", "bundle", "upload-bundle", "register",
                                           "tag"]
    publish(ctx, steps[:5])
    s3 = aws.clients.client("s3", "us-east-1")
    folder = f"{PREFIX}/smallpayroll/1.0.0/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=folder)["KeyCount"] >= 2
    assert len(aws.own_images("us-east-1")) == 1

    plan = gc(aws.clients, ["us-east-1"], min_age_seconds=0, dry_run=True)
    assert ("delete", "s3-bundle", location("1.0.0")) in {
        (a.verb, a.kind, a.ident) for a in plan.actions}
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=folder)["KeyCount"] >= 2

    gc(aws.clients, ["us-east-1"], min_age_seconds=0)
    assert aws.own_images("us-east-1") == []
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=folder)["KeyCount"] == 0
    # idempotent: the bundle is gone, the image too; a second gc has nothing to do
    assert gc(aws.clients, ["us-east-1"], min_age_seconds=0).actions == []


def test_image_bundle_prefers_what_ec2_reports() -> None:
    tagged = {"Tags": [{"Key": TAG_BUNDLE, "Value": "b/p/x.manifest.xml"}]}
    assert image_bundle(tagged) == "b/p/x.manifest.xml"
    # a region copy on real EC2: instance-store root, its own ImageLocation
    copy = {"RootDeviceType": "instance-store",
            "ImageLocation": "amis-for-123456789012-in-eu-west-1/x.manifest.xml", **tagged}
    assert image_bundle(copy) == "amis-for-123456789012-in-eu-west-1/x.manifest.xml"
    ebs = {"RootDeviceType": "ebs", "ImageLocation": "123456789012/smallpayroll-1.0.0"}
    assert image_bundle(ebs) is None


@pytest.mark.parametrize(("edit", "message"), [
    (("boot_mode: uefi-preferred", "boot_mode: uefi"), "legacy BIOS"),
    (("volume_size_gib: 4", "volume_size_gib: 11"), "at most 10 GiB"),
    (("  keep: 3", "  keep: 3\n  kms_key_ids: {us-east-1: alias/images}"),
     "encrypt EBS snapshots"),
])
def test_backing_override_gets_the_manifests_instance_store_checks(
    aws: Aws, store: Path, pki: Pki, tmp_path: Path, edit: tuple[str, str], message: str,
) -> None:
    """`--backing instance-store` on a manifest that says ebs: the load-time
    instance-store checks (builder/manifest/checks.py) run before anything is sent."""
    from builder.commands.publish import BundleArgs
    from builder.publish.run import publish_stored_image

    text = MANIFEST.read_text()
    assert edit[0] in text
    variant = tmp_path / "smallpayroll.yaml"
    variant.write_text(text.replace(edit[0], edit[1], 1))
    manifest = load_manifest(variant)
    bundle = BundleArgs(cert=pki.cert, privatekey=pki.key, ec2cert=pki.ec2_cert, bucket=BUCKET,
                        workdir=tmp_path)
    with pytest.raises(UserError, match=message):
        publish_stored_image(manifest, store / "smallpayroll" / "1.0.0", AwsTarget(), quiet(),
                             regions=("us-east-1",), backing="instance-store", bundle=bundle)
    assert aws.clients.s3().list_buckets()["Buckets"] == []  # moto's state: nothing made
    assert aws.own_images("us-east-1") == [] and aws.own_snapshots("us-east-1") == []


def test_bake_target_aws_publishes_instance_store(cli: Cli, pki: Pki, tmp_path: Path) -> None:
    """The call `amibake bake --target aws` makes (builder/commands/bake.py's publish())."""
    from builder.cli import build_parser
    from builder.commands import bake

    store = tmp_path / "images"
    image_dir = make_stored_image(store)
    args = build_parser().parse_args([
        "bake", str(MANIFEST), "--target", "aws", "--endpoint-url", cli.endpoint,
        "--backing", "instance-store", "--bucket", f"{BUCKET}/{PREFIX}", *key_args(pki),
        "--bundle-dir", str(tmp_path)])
    assert isinstance(args, argparse.Namespace)
    doc = bake.publish(args, load_manifest(MANIFEST), image_dir,
                       Output(json_mode=True, stdout=io.StringIO(), stderr=io.StringIO()))
    assert doc["published"] is True and doc["backing"] == "instance-store"
    assert doc["bundle"]["image_location"] == location("1.0.0")
    (register,) = [p for p in cli.registers() if not p.get("DryRun")]
    assert register["ImageLocation"] == location("1.0.0")


def test_bundle_command_reads_the_store_from_amibake_store(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "elsewhere"
    make_stored_image(store)
    monkeypatch.setenv("AMIBAKE_STORE", str(store))
    monkeypatch.setenv("AMIBAKE_IMAGES", str(tmp_path / "not-the-store"))  # no longer read
    monkeypatch.chdir(tmp_path)
    doc = run_json(capsys, "bundle", "--image", "smallpayroll:1.0.0", *key_args(pki),
                   "--user", "123456789012", "--destination", str(tmp_path / "out"))
    assert doc["prefix"] == "smallpayroll-1.0.0" and doc["size"] == DISK_BLOCKS * BLOCK_SIZE
