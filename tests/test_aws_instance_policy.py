"""The instance profile policy of a role (builder/aws/instance_policy.py): the exact
documents, and that `amibake iam-policy --role`, `launch --target aws` and the stack
template all use that one function. (moto has no IAM policy simulator: the JSON is
asserted statement by statement.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from builder.aws.instance_policy import (
    POLICY_NAME,
    CloudFormationArns,
    LiteralArns,
    role_policy_document,
)
from builder.cli import main
from builder.manifest import Manifest, load_manifest_text
from builder.stack.template import template
from tests.stack_fixtures import EIP, SPLIT, seed_without_stack
from tests.test_aws_instance_profile import BACKUP

HERE = LiteralArns("eu-west-1", "123456789012")


def manifest(*, storage: str = "instance-store", backup: str = BACKUP,
             stack: str = "") -> Manifest:
    text = seed_without_stack()
    marker = '    version: "15"\n'
    return load_manifest_text(
        text.replace(marker, marker + f"    storage: {storage}\n" + backup, 1) + stack,
        "policy.yaml")


def statements(m: Manifest, role: str = "db", arns: Any = HERE) -> dict[str, dict[str, Any]]:
    doc = role_policy_document(m, role, arns)
    assert doc is not None and doc["Version"] == "2012-10-17"
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert len(by_sid) == len(doc["Statement"])
    return by_sid


def test_db_role_reaches_only_its_backup_prefix() -> None:
    s = statements(manifest())
    assert list(s) == ["ReadSsmSecrets", "BackupListPrefix", "BackupObjects",
                       "BackupBucketLocation", "BackupKmsKey"]
    assert s["BackupListPrefix"] == {
        "Sid": "BackupListPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
        "Resource": ["arn:aws:s3:::payroll-backups"],
        "Condition": {"StringLike": {"s3:prefix": ["smallpayroll/db", "smallpayroll/db/*"]}}}
    assert s["BackupObjects"] == {
        "Sid": "BackupObjects", "Effect": "Allow",
        "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
        "Resource": ["arn:aws:s3:::payroll-backups/smallpayroll/db/*"]}
    assert s["BackupBucketLocation"] == {
        "Sid": "BackupBucketLocation", "Effect": "Allow", "Action": ["s3:GetBucketLocation"],
        "Resource": ["arn:aws:s3:::payroll-backups"]}
    assert s["BackupKmsKey"] == {
        "Sid": "BackupKmsKey", "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": ["arn:aws:kms:us-east-1:123456789012:key/"
                     "1234abcd-12ab-34cd-56ef-1234567890ab"]}
    # the passphrase is read on the instance: its secret is in the policy too
    assert s["ReadSsmSecrets"]["Resource"] == [
        "arn:aws:ssm:eu-west-1:123456789012:parameter/smallpayroll/db-password",
        "arn:aws:ssm:eu-west-1:123456789012:parameter/smallpayroll/backup-passphrase"]
    # nothing of EBS with the instance store, nothing else at all
    every = {a for st in s.values() for a in st["Action"]}
    assert every == {"ssm:GetParameter", "s3:ListBucket", "s3:GetObject", "s3:PutObject",
                     "s3:DeleteObject", "s3:GetBucketLocation", "kms:Decrypt",
                     "kms:GenerateDataKey"}


def test_default_prefix_is_the_manifests_name_and_no_kms_without_a_key() -> None:
    backup = ("    backup:\n      repository:\n        bucket: payroll-backups\n")
    s = statements(manifest(backup=backup))
    assert "BackupKmsKey" not in s
    assert s["BackupListPrefix"]["Condition"] == {
        "StringLike": {"s3:prefix": ["smallpayroll", "smallpayroll/*"]}}
    assert s["BackupObjects"]["Resource"] == ["arn:aws:s3:::payroll-backups/smallpayroll/*"]
    assert s["ReadSsmSecrets"]["Resource"] == [
        "arn:aws:ssm:eu-west-1:123456789012:parameter/smallpayroll/db-password"]


@pytest.mark.parametrize(("key", "resource", "condition"), [
    ("alias/backups", "arn:aws:kms:us-east-1:123456789012:key/*",
     {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/backups"}}),
    ("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
     "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", None),
    ("arn:aws:kms:us-east-1:111122223333:alias/backups", "arn:aws:kms:us-east-1:"
     "123456789012:key/*",
     {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/backups"}}),
])
def test_kms_key_forms(key: str, resource: str, condition: dict[str, Any] | None) -> None:
    backup = BACKUP.replace("1234abcd-12ab-34cd-56ef-1234567890ab", key)
    kms = statements(manifest(backup=backup))["BackupKmsKey"]
    assert kms["Resource"] == [resource]
    assert kms.get("Condition") == condition


def test_ebs_role_attaches_only_its_tagged_volume() -> None:
    s = statements(manifest(storage="ebs"))
    assert s["DataVolumeFind"] == {"Sid": "DataVolumeFind", "Effect": "Allow",
                                   "Action": ["ec2:DescribeVolumes"], "Resource": "*"}
    tags = {"aws:ResourceTag/amibake:stack": "smallpayroll",
            "aws:ResourceTag/amibake:role": "db"}
    assert s["DataVolumeAttach"] == {
        "Sid": "DataVolumeAttach", "Effect": "Allow", "Action": ["ec2:AttachVolume"],
        "Resource": ["arn:aws:ec2:eu-west-1:123456789012:volume/*"],
        "Condition": {"StringEquals": tags}}
    assert s["DataVolumeAttachToInstance"] == {
        "Sid": "DataVolumeAttachToInstance", "Effect": "Allow", "Action": ["ec2:AttachVolume"],
        "Resource": ["arn:aws:ec2:eu-west-1:123456789012:instance/*"],
        "Condition": {"StringEquals": tags}}
    # other roles get none of it
    assert role_policy_document(manifest(storage="ebs"), "web", HERE) is None
    app = statements(manifest(storage="ebs"), "app")
    assert list(app) == ["ReadSsmSecrets"]


def test_stack_name_is_the_tag_and_partitions_follow_the_region() -> None:
    m = manifest(storage="ebs", stack=EIP)
    s = statements(m, arns=LiteralArns("cn-north-1", "123456789012"))
    assert s["DataVolumeAttach"]["Condition"]["StringEquals"][
        "aws:ResourceTag/amibake:stack"] == "payroll-eip"
    assert s["DataVolumeAttach"]["Resource"] == [
        "arn:aws-cn:ec2:cn-north-1:123456789012:volume/*"]
    assert s["BackupObjects"]["Resource"] == [
        "arn:aws-cn:s3:::payroll-backups/smallpayroll/db/*"]


def test_stack_template_uses_the_same_policy() -> None:
    m = manifest(storage="ebs", stack=SPLIT)
    tpl = template(m)
    resources = tpl["Resources"]
    for role in ("Web", "App", "Db"):
        props = resources[f"{role}InstanceRole"]["Properties"]
        expected = role_policy_document(m, role.lower(), CloudFormationArns())
        if expected is None:
            assert "Policies" not in props
        else:
            assert props["Policies"] == [{"PolicyName": POLICY_NAME,
                                          "PolicyDocument": expected}]
    db = resources["DbInstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in db["Statement"]}
    assert by_sid["DataVolumeAttach"]["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:volume/*"}]
    assert by_sid["BackupObjects"]["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::payroll-backups/smallpayroll/db/*"}]
    assert by_sid["BackupKmsKey"]["Resource"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:kms:us-east-1:${AWS::AccountId}:key/"
                    "1234abcd-12ab-34cd-56ef-1234567890ab"}]


def test_cli_prints_the_roles_policy(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    m = manifest(storage="ebs")
    path = tmp_path / "m.yaml"
    text = seed_without_stack()
    marker = '    version: "15"\n'
    path.write_text(text.replace(marker, marker + "    storage: ebs\n" + BACKUP, 1))
    assert main(["iam-policy", "--role", "db", str(path), "--region", "eu-west-1",
                 "--account", "123456789012", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == role_policy_document(m, "db", HERE)
    assert main(["iam-policy", "--role", "db", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["DataVolumeAttach"]["Resource"] == ["arn:aws:ec2:*:*:volume/*"]
    for bad in (["--role", "db"], ["--role", "nope", str(path)],
                ["--role", "db", str(path), "--account", "12"],
                ["--role", "db", str(path), "--launch"]):
        assert main(["iam-policy", *bad]) != 0
        err = capsys.readouterr()
        assert "Traceback" not in err.err + err.out
