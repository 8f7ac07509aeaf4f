"""`launch --target aws`: the instance profile it makes, reuses or is given, and the db
role's EBS data volume (`storage: ebs`), against moto. moto keeps little of RunInstances'
IamInstanceProfile and Placement, so the requests boto3 sends are asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.aws.instance_policy import POLICY_NAME, LiteralArns, role_policy_document
from builder.aws.launch import launch_aws
from builder.errors import UserError
from builder.manifest import Manifest, load_manifest_text
from builder.wait import Waiter
from tests.aws_fixtures import ROOT, Aws
from tests.test_aws_launch import drop_instance_store_mapping, published_ami

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest

ACCOUNT = "123456789012"  # moto's
PROFILE = "amibake-smallpayroll-db"
BACKUP = """\
    backup:
      repository:
        bucket: payroll-backups
        prefix: smallpayroll/db
        region: us-east-1
        kms_key_id: 1234abcd-12ab-34cd-56ef-1234567890ab
        cipher_passphrase: {ssm: /smallpayroll/backup-passphrase}
"""
FAST = Waiter("test", attempts=3, interval=0.0)


def ebs_manifest(*, storage: str = "ebs", backup: bool = True, name: str = "") -> Manifest:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    if name:
        text = text.replace("name: smallpayroll\n", f"name: {name}\n", 1)
    marker = '    version: "15"\n'
    assert marker in text
    extra = f"    storage: {storage}\n" + (BACKUP if backup else "")
    return load_manifest_text(text.replace(marker, marker + extra, 1), "ebs.yaml")


def terminate_on_wait(aws: Aws) -> None:
    """The launched instance dies before it is running: the launch must clean up."""
    def fail(parsed: dict[str, Any], **_: Any) -> None:
        for res in parsed.get("Reservations", []):
            for inst in res["Instances"]:
                inst["State"]["Name"] = "terminated"

    aws.on("after-call.ec2.DescribeInstances", fail)


def launch(aws: Aws, m: Manifest, tmp_path: Path, **kw: Any) -> Any:
    return launch_aws(aws.clients, m, "db", ssh_cidr="203.0.113.7", key_dir=tmp_path / "k",
                      profile_waiter=FAST, **kw)


def test_launch_makes_the_profile_with_the_roles_policy(aws: Aws, tmp_path: Path) -> None:
    m = ebs_manifest(storage="instance-store")
    published_ami(aws)
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    result = launch(aws, m, tmp_path)
    (run,) = aws.recorder.of("RunInstances")
    assert run.params["IamInstanceProfile"] == {"Name": PROFILE}
    assert result.instance_profile == PROFILE
    iam = aws.session.client("iam")
    role = iam.get_role(RoleName=PROFILE)["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]
    policy = iam.get_role_policy(RoleName=PROFILE, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert policy == role_policy_document(m, "db", LiteralArns("us-east-1", ACCOUNT))
    # the db role reads its two secrets and its backup prefix, nothing of EBS
    sids = [s["Sid"] for s in policy["Statement"]]
    assert sids == ["ReadSsmSecrets", "BackupListPrefix", "BackupObjects",
                    "BackupBucketLocation", "BackupKmsKey"]
    assert policy["Statement"][0]["Resource"] == [
        f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/smallpayroll/db-password",
        f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/smallpayroll/backup-passphrase"]
    (profile,) = [p for p in iam.list_instance_profiles()["InstanceProfiles"]
                  if p["InstanceProfileName"] == PROFILE]
    assert [r["RoleName"] for r in profile["Roles"]] == [PROFILE]
    # the instance-store role keeps its mapping and gets no volume
    assert run.params["BlockDeviceMappings"] == [
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    assert not aws.recorder.of("CreateVolume")
    assert result.data_volume == ""


def test_second_launch_reuses_the_profile(aws: Aws, tmp_path: Path) -> None:
    m = ebs_manifest(storage="instance-store")
    published_ami(aws)
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    launch(aws, m, tmp_path)
    first = aws.session.client("iam").get_role(RoleName=PROFILE)["Role"]["RoleId"]
    aws.recorder.clear()
    aws.session.client("ec2", region_name="us-east-1").terminate_instances(
        InstanceIds=[i["InstanceId"] for r in aws.session.client(
            "ec2", region_name="us-east-1").describe_instances()["Reservations"]
            for i in r["Instances"]])
    launch(aws, m, tmp_path)
    assert not aws.recorder.of("CreateRole")
    assert not aws.recorder.of("CreateInstanceProfile")
    assert len(aws.recorder.of("PutRolePolicy")) == 1  # the current policy, again
    assert aws.session.client("iam").get_role(RoleName=PROFILE)["Role"]["RoleId"] == first
    (run,) = aws.recorder.of("RunInstances")
    assert run.params["IamInstanceProfile"] == {"Name": PROFILE}


def existing_profile(aws: Aws, name: str = "ops-db") -> None:
    aws.session.client("iam").create_instance_profile(InstanceProfileName=name)
    aws.recorder.clear()


def test_given_profile_is_used_as_it_is(aws: Aws, tmp_path: Path) -> None:
    published_ami(aws)
    existing_profile(aws)
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    launch(aws, ebs_manifest(storage="instance-store"), tmp_path, instance_profile="ops-db")
    (run,) = aws.recorder.of("RunInstances")
    assert run.params["IamInstanceProfile"] == {"Name": "ops-db"}
    assert not [c for c in aws.recorder.calls if c.service == "iam"]
    with pytest.raises(UserError, match="not an instance profile name"):
        launch(aws, ebs_manifest(), tmp_path, instance_profile="bad name;")


def test_role_without_permissions_gets_no_profile(aws: Aws, manifest: Manifest,
                                                  tmp_path: Path) -> None:
    published_ami(aws)
    result = launch_aws(aws.clients, manifest, "web", ssh_cidr="203.0.113.7",
                        key_dir=tmp_path / "k")
    (run,) = aws.recorder.of("RunInstances")
    assert "IamInstanceProfile" not in run.params
    assert result.instance_profile == ""
    assert not aws.session.client("iam").list_roles()["Roles"]


def test_new_profile_is_retried_until_ec2_knows_it(aws: Aws, tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    published_ami(aws)
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    refused: list[int] = []

    def not_yet(**_: Any) -> None:
        if not refused:
            refused.append(1)
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message":
                               "Value (amibake-smallpayroll-db) for parameter "
                               "iamInstanceProfile.name is invalid. Invalid IAM Instance "
                               "Profile name"}}, "RunInstances")

    aws.on("before-call.ec2.RunInstances", not_yet)
    result = launch(aws, ebs_manifest(storage="instance-store"), tmp_path)
    assert refused and result.instance_profile == PROFILE
    assert len(aws.recorder.of("RunInstances")) == 2


# ------------------------------------------------------------------ storage: ebs


def test_ebs_launch_makes_the_volume_in_the_instances_zone(aws: Aws, tmp_path: Path) -> None:
    m = ebs_manifest()
    published_ami(aws)
    result = launch(aws, m, tmp_path)
    (run,) = aws.recorder.of("RunInstances")
    assert "BlockDeviceMappings" not in run.params  # no instance store: the data is on EBS
    assert "Placement" not in run.params  # no volume yet: EC2 chooses the zone
    (spec,) = [s for s in run.params["TagSpecifications"] if s["ResourceType"] == "instance"]
    assert {"Key": "amibake:stack", "Value": "smallpayroll"} in spec["Tags"]
    assert {"Key": "amibake:role", "Value": "db"} in spec["Tags"]
    (create,) = aws.recorder.of("CreateVolume")
    ec2 = aws.session.client("ec2", region_name="us-east-1")
    inst = ec2.describe_instances(InstanceIds=[result.instance_id])["Reservations"][0][
        "Instances"][0]
    assert create.params["AvailabilityZone"] == inst["Placement"]["AvailabilityZone"]
    assert (create.params["VolumeType"], create.params["Size"], create.params["Encrypted"]) \
        == ("gp3", 20, True)
    (volume,) = ec2.describe_volumes(VolumeIds=[result.data_volume])["Volumes"]
    tags = {t["Key"]: t["Value"] for t in volume["Tags"]}
    assert tags == {"Name": "smallpayroll-db-data", "amibake:stack": "smallpayroll",
                    "amibake:role": "db"}
    # the profile may find and attach exactly that volume
    policy = aws.session.client("iam").get_role_policy(
        RoleName=PROFILE, PolicyName=POLICY_NAME)["PolicyDocument"]
    attach = [s for s in policy["Statement"] if s["Sid"] == "DataVolumeAttach"]
    assert attach == [{"Sid": "DataVolumeAttach", "Effect": "Allow",
                       "Action": ["ec2:AttachVolume"],
                       "Resource": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:volume/*"],
                       "Condition": {"StringEquals": {
                           "aws:ResourceTag/amibake:stack": "smallpayroll",
                           "aws:ResourceTag/amibake:role": "db"}}}]


def _volume(aws: Aws, zone: str) -> str:
    ec2 = aws.session.client("ec2", region_name="us-east-1")
    return str(ec2.create_volume(AvailabilityZone=zone, Size=20, VolumeType="gp3",
                                 TagSpecifications=[{"ResourceType": "volume", "Tags": [
                                     {"Key": "amibake:stack", "Value": "smallpayroll"},
                                     {"Key": "amibake:role", "Value": "db"}]}])["VolumeId"])


def test_ebs_launch_starts_in_the_existing_volumes_zone(aws: Aws, tmp_path: Path) -> None:
    published_ami(aws)
    vid = _volume(aws, "us-east-1c")
    aws.recorder.clear()
    result = launch(aws, ebs_manifest(), tmp_path)
    (run,) = aws.recorder.of("RunInstances")
    assert run.params["Placement"] == {"AvailabilityZone": "us-east-1c"}
    assert not aws.recorder.of("CreateVolume")
    assert result.data_volume == vid


def test_ebs_volume_attached_elsewhere_is_refused(aws: Aws, tmp_path: Path) -> None:
    ami = published_ami(aws)
    ec2 = aws.session.client("ec2", region_name="us-east-1")
    vid = _volume(aws, "us-east-1a")
    other = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                              Placement={"AvailabilityZone": "us-east-1a"})
    other_id = other["Instances"][0]["InstanceId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=other_id, Device="/dev/sdf")
    aws.recorder.clear()
    with pytest.raises(UserError, match=f"{vid} .* is attached to {other_id}"):
        launch(aws, ebs_manifest(), tmp_path)
    assert not aws.recorder.of("RunInstances")
    assert not [c for c in aws.recorder.calls if c.service == "iam"]


def test_two_tagged_volumes_are_refused(aws: Aws, tmp_path: Path) -> None:
    published_ami(aws)
    _volume(aws, "us-east-1a")
    _volume(aws, "us-east-1b")
    with pytest.raises(UserError, match="2 volumes are tagged amibake:stack=smallpayroll"):
        launch(aws, ebs_manifest(), tmp_path)
    assert not aws.recorder.of("RunInstances")


def test_failed_launch_removes_profile_and_volume_it_made(aws: Aws, tmp_path: Path) -> None:
    published_ami(aws)
    terminate_on_wait(aws)
    with pytest.raises(UserError, match="terminated"):
        launch(aws, ebs_manifest(), tmp_path)
    (create,) = aws.recorder.of("CreateVolume")
    ec2 = aws.session.client("ec2", region_name="us-east-1")
    assert ec2.describe_volumes()["Volumes"] == []
    iam = aws.session.client("iam")
    assert iam.list_roles()["Roles"] == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    # the volume went after the instance (a volume cannot be deleted while attached)
    names = [c.operation for c in aws.recorder.calls]
    assert names.index("TerminateInstances") < names.index("DeleteVolume")


def test_failed_launch_keeps_what_existed(aws: Aws, tmp_path: Path) -> None:
    published_ami(aws)
    vid = _volume(aws, "us-east-1b")
    launch(aws, ebs_manifest(), tmp_path)  # makes the profile
    ec2 = aws.session.client("ec2", region_name="us-east-1")
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for r in ec2.describe_instances()[
        "Reservations"] for i in r["Instances"]])
    for att in ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Attachments"]:
        ec2.detach_volume(VolumeId=vid, InstanceId=att["InstanceId"])
    terminate_on_wait(aws)
    with pytest.raises(UserError, match="terminated"):
        launch(aws, ebs_manifest(), tmp_path)
    assert [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]] == [vid]
    assert aws.session.client("iam").get_role(RoleName=PROFILE)["Role"]["RoleName"] == PROFILE


def test_cli_flag_reaches_the_request(aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from builder.cli import main

    published_ami(aws)
    existing_profile(aws)
    path = tmp_path / "m.yaml"
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    path.write_text(text.replace('    version: "15"\n', '    version: "15"\n    storage: ebs\n',
                                 1))
    monkeypatch.setattr("builder.aws.clients.make_clients", lambda *a, **k: aws.clients)
    assert main(["launch", "--target", "aws", "db", "--manifest", str(path), "--ssh-cidr",
                 "203.0.113.7", "--key-dir", str(tmp_path / "k"), "--instance-profile",
                 "ops-db", "--json"]) == 0
    (run,) = aws.recorder.of("RunInstances")
    assert run.params["IamInstanceProfile"] == {"Name": "ops-db"}
    (create,) = aws.recorder.of("CreateVolume")
    assert json.loads(capsys.readouterr().out)["data_volume"].startswith("vol-")
