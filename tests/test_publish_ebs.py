"""Publishing a stored image as EBS-backed AMIs against moto, with the
requests boto3 sends asserted (moto keeps little of RegisterImage/CopyImage)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from builder.disk_digest import file_digest
from builder.errors import UserError
from builder.manifest import Manifest
from builder.output import Output
from builder.publish.context import PublishContext, Resource, ami_name
from builder.publish.run import ebs_steps, publish
from builder.publish.snapshot_upload import BLOCK_SIZE, UploadOptions
from builder.publish.step_copy import CopyToRegionsStep
from builder.publish.step_register import RegisterImageStep
from builder.publish.step_snapshot import UploadSnapshotStep
from builder.publish.steps import CleanupFailed, run_steps
from builder.publish.upload_journal import UploadJournal, journal_path
from builder.steps import Outcome, Resumable
from builder.store import StoredImage
from tests.aws_fixtures import (
    DATA_BLOCKS,
    PARTIAL_BLOCK,
    Aws,
    block_index,
    error_response,
    http_error,
    is_dry_run,
    make_stored_image,
    quiet,
)

REGIONS = ("us-east-1", "eu-west-1")

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest


def make_ctx(aws: Aws, store: Path, manifest: Manifest, *, version: str = "1.0.0",
             regions: tuple[str, ...] = REGIONS, out: Output | None = None,
             kms: dict[str, str] | None = None, dry_run: bool = False) -> PublishContext:
    image = StoredImage.load(store / "smallpayroll" / version)
    return PublishContext(
        clients=aws.clients, out=out or quiet(), image=image,
        ami_name=ami_name(manifest.image.name_template, image.name, image.version,
                          image.architecture),
        regions=regions, ssm_prefix="/amibake", kms_key_ids=kms or {}, dry_run=dry_run,
    )


def fast_steps() -> list[Any]:
    return ebs_steps(UploadSnapshotStep(sleep=lambda _s: None))


def nothing_left(aws: Aws, regions: tuple[str, ...] = REGIONS) -> None:
    for region in regions:
        assert aws.own_images(region) == [], region
        assert aws.own_snapshots(region) == [], region
        params = aws.clients.ssm(region).describe_parameters()["Parameters"]
        assert params == [], region


def test_publish_registers_tags_copies_and_sets_ssm(aws: Aws, store: Path,
                                                    manifest: Manifest) -> None:
    ctx = make_ctx(aws, store, manifest, kms={"eu-west-1": "arn:aws:kms:eu-west-1:1:key/k"})
    doc = publish(ctx, fast_steps())
    home, copy = doc["images"]["us-east-1"], doc["images"]["eu-west-1"]
    assert not doc["existing"]

    (reg,) = aws.recorder.of("RegisterImage")
    p = reg.params
    assert p["Name"] == "smallpayroll-1.0.0"
    assert p["RootDeviceName"] == "/dev/xvda"
    assert p["VirtualizationType"] == "hvm"
    assert p["Architecture"] == "x86_64"
    assert p["BootMode"] == "uefi-preferred"
    assert p["EnaSupport"] is True
    assert p["ImdsSupport"] == "v2.0"
    (bdm,) = p["BlockDeviceMappings"]
    assert bdm["DeviceName"] == "/dev/xvda"
    assert bdm["Ebs"] == {"SnapshotId": doc["upload"]["snapshot_id"], "VolumeType": "gp3",
                          "VolumeSize": 4, "DeleteOnTermination": True}
    (spec,) = p["TagSpecifications"]
    assert spec["ResourceType"] == "image"
    tags = {t["Key"]: t["Value"] for t in spec["Tags"]}
    assert tags["Name"] == "smallpayroll-1.0.0" and tags["Version"] == "1.0.0"
    assert tags["Role"] == "web,app,db,all-in-one"
    assert tags["amibake:build-id"] == ctx.build_id
    assert tags["amibake:disk-digest"] == ctx.image.disk.digest
    assert tags["amibake:inputs-digest"].startswith("sha256:")
    assert tags["amibake:builder-version"] == "0.1.0"

    # read-back: tags landed (CreateTags), copy exists and is tagged, SSM typed
    for region, image_id in doc["images"].items():
        ec2 = aws.clients.ec2(region)
        (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
        got = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert got["amibake:build-id"] == ctx.build_id
        assert got["amibake:complete"] == "true"
        for snap in doc["snapshots"][region]:
            (s,) = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"]
            assert {t["Key"]: t["Value"] for t in s["Tags"]}["amibake:build-id"] == ctx.build_id
        ssm = aws.clients.ssm(region)
        for leaf in ("latest", "1.0.0"):
            par = ssm.get_parameter(Name=f"/amibake/smallpayroll/{leaf}")["Parameter"]
            assert par["Value"] == image_id and par["DataType"] == "aws:ec2:image"

    (cp,) = aws.recorder.of("CopyImage")
    assert cp.params["SourceImageId"] == home and cp.params["SourceRegion"] == "us-east-1"
    assert cp.params["Encrypted"] is True
    assert cp.params["KmsKeyId"] == "arn:aws:kms:eu-west-1:1:key/k"
    kinds = {s["ResourceType"]: {t["Key"]: t["Value"] for t in s["Tags"]}
             for s in cp.params["TagSpecifications"]}
    assert kinds["image"]["amibake:build-id"] == ctx.build_id
    assert kinds["snapshot"]["Version"] == "1.0.0"
    assert copy != home
    # DryRun checks ran before anything was created
    ops = [c.operation for c in aws.recorder.calls]
    assert ops.index("GetCallerIdentity") < ops.index("StartSnapshot")
    dry = [c for c in aws.recorder.calls if c.params.get("DryRun")]
    assert {c.operation for c in dry} == {"RegisterImage", "CopyImage"}
    assert ops.index("DescribeRegions") < ops.index("StartSnapshot")


def test_republish_same_digest_changes_nothing(aws: Aws, store: Path,
                                               manifest: Manifest) -> None:
    first = publish(make_ctx(aws, store, manifest), fast_steps())
    aws.recorder.clear()
    again = publish(make_ctx(aws, store, manifest), fast_steps())
    assert again["existing"] is True
    assert again["images"] == first["images"]
    mutating = {c.operation for c in aws.recorder.calls
                if not c.operation.startswith(("Describe", "Get", "List"))
                and not c.params.get("DryRun")}
    assert mutating == set()


def test_republish_different_digest_is_refused(aws: Aws, store: Path, manifest: Manifest,
                                               tmp_path: Path) -> None:
    publish(make_ctx(aws, store, manifest), fast_steps())
    other = tmp_path / "other"
    make_stored_image(other, seed=99)
    aws.recorder.clear()
    with pytest.raises(UserError, match="different disk") as err:
        publish(make_ctx(aws, other, manifest), fast_steps())
    assert "bump" in err.value.hint
    assert not aws.recorder.of("StartSnapshot")


def test_an_ami_of_an_older_amibake_is_compared_by_the_plain_sha256(
        aws: Aws, store: Path, manifest: Manifest, tmp_path: Path) -> None:
    """AMIs published before the block digest carry `amibake:disk-sha256` (plain
    hex): the stored disk is hashed that way to compare."""
    first = publish(make_ctx(aws, store, manifest), fast_steps())
    disk = StoredImage.load(store / "smallpayroll" / "1.0.0").disk_path
    for region, ami in first["images"].items():
        ec2 = aws.clients.ec2(region)
        ec2.delete_tags(Resources=[ami], Tags=[{"Key": "amibake:disk-digest"}])
        ec2.create_tags(Resources=[ami], Tags=[{"Key": "amibake:disk-sha256", "Value":
                                                file_digest(disk, "sha256").split(":")[1]}])
    assert publish(make_ctx(aws, store, manifest), fast_steps())["existing"] is True
    other = tmp_path / "other"
    make_stored_image(other, seed=99)
    with pytest.raises(UserError, match="different disk"):
        publish(make_ctx(aws, other, manifest), fast_steps())


def test_a_disk_changed_after_its_bake_is_not_uploaded(aws: Aws, store: Path,
                                                       manifest: Manifest) -> None:
    image = StoredImage.load(store / "smallpayroll" / "1.0.0")
    with image.disk_path.open("r+b") as f:
        f.seek(DATA_BLOCKS[0] * BLOCK_SIZE + 99)
        f.write(b"!")
    with pytest.raises(UserError, match="not the disk its image.json names"):
        publish(make_ctx(aws, store, manifest), fast_steps())
    assert not aws.recorder.of("PutSnapshotBlock")
    nothing_left(aws)


def test_a_record_of_an_older_amibake_publishes_with_its_plain_sha256(
        aws: Aws, tmp_path: Path, manifest: Manifest) -> None:
    old = tmp_path / "old"
    make_stored_image(old, legacy=True)
    ctx = make_ctx(aws, old, manifest)
    assert ctx.image.disk.digest.startswith("sha256:")
    doc = publish(ctx, fast_steps())
    tags = {t["Key"]: t["Value"] for t in aws.clients.ec2().describe_images(
        ImageIds=[doc["images"]["us-east-1"]])["Images"][0]["Tags"]}
    assert tags["amibake:disk-digest"] == file_digest(ctx.image.disk_path, "sha256")


def test_unknown_region_refused_before_anything_is_created(aws: Aws, store: Path,
                                                           manifest: Manifest) -> None:
    with pytest.raises(UserError, match="unknown region.*mars-north-1"):
        publish(make_ctx(aws, store, manifest, regions=("us-east-1", "mars-north-1")),
                fast_steps())
    assert not aws.recorder.of("StartSnapshot")


def test_permission_denied_dry_run_refused(aws: Aws, store: Path, manifest: Manifest) -> None:
    aws.on("before-call.ec2.CopyImage", lambda **_: error_response("UnauthorizedOperation", 403))
    with pytest.raises(UserError, match="not allowed: ec2:CopyImage in eu-west-1"):
        publish(make_ctx(aws, store, manifest), fast_steps())
    assert not aws.recorder.of("StartSnapshot")


def test_failure_after_snapshot_before_register_deletes_snapshot(
        aws: Aws, store: Path, manifest: Manifest) -> None:
    aws.on("before-call.ec2.RegisterImage",
           lambda context, **_: None if is_dry_run(context) else
           error_response("InvalidParameterValue", 400))
    with pytest.raises(Exception, match="InvalidParameterValue"):
        publish(make_ctx(aws, store, manifest), fast_steps())
    (start,) = aws.recorder.of("StartSnapshot")
    deleted = [c.params["SnapshotId"] for c in aws.recorder.of("DeleteSnapshot")]
    assert len(deleted) == 1
    nothing_left(aws)
    assert not (store / "smallpayroll/1.0.0/disk.raw.ebs-upload.json").exists()


def test_failure_during_region_copy_leaves_nothing_in_either_region(
        aws: Aws, store: Path, manifest: Manifest) -> None:
    # the copy is created and available, then the step fails: everything must go
    class BrokenCopy(CopyToRegionsStep):
        def run(self, ctx: PublishContext) -> None:
            super().run(ctx)
            raise RuntimeError("copy to eu-west-1 failed")

    steps = fast_steps()
    steps[4] = BrokenCopy()
    with pytest.raises(RuntimeError, match="copy to eu-west-1 failed"):
        publish(make_ctx(aws, store, manifest), steps)
    assert aws.recorder.of("CopyImage")
    assert len([c for c in aws.recorder.of("DeregisterImage")]) == 2
    nothing_left(aws)


def test_copy_api_failure_cleans_both_regions(aws: Aws, store: Path,
                                              manifest: Manifest) -> None:
    regions = ("us-east-1", "eu-west-1", "ap-southeast-2")

    def fail_third(params: Any, context: Any, **_: Any) -> Any:
        if "ap-southeast-2" in params.get("url", "") and not is_dry_run(context):
            return error_response("InternalError", 500)
        return None

    aws.on("before-call.ec2.CopyImage", fail_third)
    with pytest.raises(Exception, match="InternalError"):
        publish(make_ctx(aws, store, manifest, regions=regions), fast_steps())
    nothing_left(aws, regions)


def test_failing_cleanup_prints_what_to_delete_by_hand(aws: Aws, store: Path,
                                                       manifest: Manifest) -> None:
    aws.on("before-call.ec2.RegisterImage",
           lambda context, **_: None if is_dry_run(context) else
           error_response("InvalidParameterValue", 400))
    aws.on("before-call.ec2.DeleteSnapshot",
           lambda **_: error_response("UnauthorizedOperation", 403))
    err_out = io.StringIO()
    out = Output(stdout=io.StringIO(), stderr=err_out)
    with pytest.raises(CleanupFailed) as err:
        publish(make_ctx(aws, store, manifest, out=out), fast_steps())
    (start,) = aws.recorder.of("StartSnapshot")
    (left,) = err.value.leftovers
    assert isinstance(left, Resource) and left.kind == "snapshot"
    cmd = f"aws ec2 delete-snapshot --region us-east-1 --snapshot-id {left.ident}"
    assert cmd in err_out.getvalue()
    assert cmd in err.value.hint
    assert "InvalidParameterValue" in str(err.value)


def test_dry_run_plans_and_creates_nothing(aws: Aws, store: Path, manifest: Manifest) -> None:
    doc = publish(make_ctx(aws, store, manifest, dry_run=True), fast_steps())
    text = "\n".join(doc["actions"])
    assert "upload-snapshot: create snapshot in us-east-1" in text
    assert "copy-regions: copy to eu-west-1" in text
    assert "/amibake/smallpayroll/latest" in text
    created = {c.operation for c in aws.recorder.calls if not c.params.get("DryRun")}
    assert created <= {"GetCallerIdentity", "DescribeRegions", "DescribeImages"}


def test_latest_only_moves_forward(aws: Aws, store: Path, manifest: Manifest) -> None:
    make_stored_image(store, version="1.1.0", seed=11)
    make_stored_image(store, version="0.9.0", seed=12)
    new = publish(make_ctx(aws, store, manifest, version="1.1.0", regions=("us-east-1",)),
                  fast_steps())
    publish(make_ctx(aws, store, manifest, version="0.9.0", regions=("us-east-1",)),
            fast_steps())
    ssm = aws.clients.ssm()
    latest = ssm.get_parameter(Name="/amibake/smallpayroll/latest")["Parameter"]["Value"]
    assert latest == new["images"]["us-east-1"]
    assert ssm.get_parameter(Name="/amibake/smallpayroll/0.9.0")["Parameter"]["Value"]


def test_runner_cleans_up_in_reverse_including_the_failing_step(aws: Aws, store: Path,
                                                                manifest: Manifest) -> None:
    order: list[str] = []

    class Fake:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        def describe(self, ctx: PublishContext) -> str:
            return ""

        def run(self, ctx: PublishContext) -> None:
            order.append(f"run {self.name}")
            if self.fail:
                raise KeyboardInterrupt

        def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
            order.append(f"cleanup {self.name}")

    with pytest.raises(KeyboardInterrupt):
        run_steps([Fake("a"), Fake("b"), Fake("c", fail=True), Fake("d")],
                  make_ctx(aws, store, manifest))
    assert order == ["run a", "run b", "run c", "cleanup c", "cleanup b", "cleanup a"]


def test_register_step_builds_instance_store_requests(aws: Aws, store: Path,
                                                      manifest: Manifest) -> None:
    from builder.publish.context import BundleRoot
    from builder.publish.step_register import register_request

    ctx = make_ctx(aws, store, manifest)
    ctx.root = BundleRoot("bucket/smallpayroll/1.0.0/image.manifest.xml")
    req = register_request(ctx)
    assert req["ImageLocation"] == "bucket/smallpayroll/1.0.0/image.manifest.xml"
    assert "Ebs" not in str(req["BlockDeviceMappings"])
    assert RegisterImageStep().name == "register"


def _stuck_block(index: int) -> Any:
    """Throttle every send of EBS block `index`, for ever (retries run out)."""
    return lambda op, request: (http_error("ebs", "ThrottlingException")
                                if op == "PutSnapshotBlock" and block_index(request) == index
                                else None)


def test_failed_upload_keeps_snapshot_and_journal_and_the_rerun_resumes(
        aws: Aws, store: Path, manifest: Manifest) -> None:
    """Through the step runner: a failure worth resuming keeps the snapshot and
    the journal (the hint is true), and the same publish again sends only the
    blocks still missing."""
    disk = store / "smallpayroll" / "1.0.0" / "disk.raw"
    stuck = 41
    aws.sends.fail = _stuck_block(stuck)
    steps = ebs_steps(UploadSnapshotStep(UploadOptions(concurrency=1), sleep=lambda _s: None))
    with pytest.raises(Resumable, match="ThrottlingException") as err:
        publish(make_ctx(aws, store, manifest), steps)
    assert "run the same command again to resume" in err.value.hint
    (kept,) = aws.own_snapshots("us-east-1")
    assert journal_path(disk).exists()
    assert aws.own_images("us-east-1") == []
    first = {block_index(r) for r in aws.sends.of("PutSnapshotBlock")}
    acked = UploadJournal.load(journal_path(disk))
    assert acked is not None and stuck not in acked.acknowledged
    assert acked.acknowledged == {i for i in first if i != stuck}

    aws.sends.fail = lambda _op, _r: None
    aws.sends.clear()
    aws.recorder.clear()
    doc = publish(make_ctx(aws, store, manifest), fast_steps())
    assert not aws.recorder.of("StartSnapshot")
    resent = [block_index(r) for r in aws.sends.of("PutSnapshotBlock")]
    nonzero = {*DATA_BLOCKS, PARTIAL_BLOCK}
    assert sorted(resent) == sorted(nonzero - acked.acknowledged)  # each missing block once
    assert doc["upload"]["snapshot_id"] == kept
    assert doc["upload"]["blocks_resumed"] == len(acked.acknowledged)
    (register,) = aws.recorder.of("RegisterImage")
    assert register.params["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == kept
    assert not journal_path(disk).exists()  # finalize removes it


@pytest.mark.parametrize("abort", ["interrupt", "refused"])
def test_aborted_upload_deletes_snapshot_and_journal(aws: Aws, store: Path,
                                                     manifest: Manifest, abort: str) -> None:
    """Ctrl-C or an error nobody can retry past is an abort: nothing is kept."""
    disk = store / "smallpayroll" / "1.0.0" / "disk.raw"

    def fail(op: str, request: Any) -> Any:
        if op == "PutSnapshotBlock" and block_index(request) == 41:
            if abort == "interrupt":
                raise KeyboardInterrupt
            return http_error("ebs", "AccessDeniedException", 403)
        return None

    aws.sends.fail = fail
    steps = ebs_steps(UploadSnapshotStep(UploadOptions(concurrency=1), sleep=lambda _s: None))
    with pytest.raises(KeyboardInterrupt if abort == "interrupt" else UserError) as err:
        publish(make_ctx(aws, store, manifest), steps)
    assert not isinstance(err.value, Resumable)
    assert aws.own_snapshots("us-east-1") == []
    assert not journal_path(disk).exists()
    nothing_left(aws)
