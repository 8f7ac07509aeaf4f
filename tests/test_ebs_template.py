"""`storage: ebs` in the stack template: the db role's gp3 volume (snapshotted on delete
and replacement, in the db subnet's zone, tagged for the boot step and the policy), no
instance-store mapping, cfn-lint clean, and deployed into moto."""

from __future__ import annotations

from pathlib import Path

import boto3

from builder.manifest import Manifest
from builder.manifest.checks import run_cross_checks
from builder.stack.template import template, template_yaml
from tests.stack_fixtures import EIP, SPLIT, as_cloudformation_resolves, published
from tests.test_aws_instance_policy import manifest
from tests.test_stack_template import moto_aws  # noqa: F401 (fixture)


def ebs(stack: str = SPLIT) -> Manifest:
    return manifest(storage="ebs", stack=stack)


def test_db_volume_in_the_db_subnets_zone() -> None:
    res = template(ebs())["Resources"]
    volume = res["DbDataVolume"]
    assert volume["Type"] == "AWS::EC2::Volume"
    assert (volume["DeletionPolicy"], volume["UpdateReplacePolicy"]) == ("Snapshot", "Snapshot")
    props = volume["Properties"]
    assert props["AvailabilityZone"] == {"Fn::GetAtt": ["SubnetA", "AvailabilityZone"]}
    assert res["DbInstance"]["Properties"]["SubnetId"] == {"Ref": "SubnetA"}
    assert (props["VolumeType"], props["Size"], props["Encrypted"]) == ("gp3", 20, True)
    assert {"Key": "amibake:stack", "Value": "smallpayroll"} in props["Tags"]
    assert {"Key": "amibake:role", "Value": "db"} in props["Tags"]
    # the instance starts after its volume exists (the boot step looks for it)
    assert res["DbInstance"]["DependsOn"] == "DbDataVolume"
    data = res["DbLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert "BlockDeviceMappings" not in data
    (spec,) = data["TagSpecifications"]
    assert {"Key": "amibake:stack", "Value": "smallpayroll"} in spec["Tags"]
    assert [k for k in res if k.endswith("DataVolume")] == ["DbDataVolume"]


def test_instance_store_stack_has_no_volume() -> None:
    res = template(manifest(stack=SPLIT))["Resources"]
    assert not [r for r in res.values() if r["Type"] == "AWS::EC2::Volume"]
    data = res["DbLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb",
                                            "VirtualName": "ephemeral0"}]


def test_existing_vpc_volume_follows_the_instances_zone() -> None:
    res = template(ebs(EIP))["Resources"]
    assert res["DbDataVolume"]["Properties"]["AvailabilityZone"] == {
        "Fn::GetAtt": ["DbInstance", "AvailabilityZone"]}
    assert "DependsOn" not in res["DbInstance"]
    tags = res["DbDataVolume"]["Properties"]["Tags"]
    assert {"Key": "amibake:stack", "Value": "payroll-eip"} in tags


def test_ebs_db_needs_no_instance_store_type() -> None:
    text_type = "t3.medium"
    base = ebs()
    roles = dict(base.roles)
    from dataclasses import replace
    roles["db"] = replace(roles["db"], instance_type=text_type)
    problems: list[tuple[str, str]] = []
    run_cross_checks(replace(base, roles=roles), lambda p, msg: problems.append((p, msg)))
    assert not [p for p in problems if "instance store" in p[1]]
    store = manifest(stack=SPLIT)
    roles = dict(store.roles)
    roles["db"] = replace(roles["db"], instance_type=text_type)
    problems = []
    run_cross_checks(replace(store, roles=roles), lambda p, msg: problems.append((p, msg)))
    assert [p for p, _ in problems] == ["roles.db.instance_type"]


def test_cfn_lint_passes(tmp_path: Path) -> None:
    from cfnlint.api import ManualArgs, lint

    config = ManualArgs(regions=["us-east-1"], include_checks=["I"])
    for m in (ebs(), ebs(EIP)):
        matches = lint(template_yaml(m), config=config)
        assert [f"{x.rule.id} {x.message} (line {x.linenumber})" for x in matches] == []


def test_deploys_into_moto(moto_aws: boto3.Session) -> None:  # noqa: F811
    cert = moto_aws.client("acm").request_certificate(
        DomainName="payroll.example.com")["CertificateArn"]
    from tests.stack_fixtures import CERT

    m = manifest(storage="ebs", stack=SPLIT.replace(CERT, cert))
    published(moto_aws, m)
    cfn = moto_aws.client("cloudformation")
    body = as_cloudformation_resolves(template_yaml(m), moto_aws.client("ssm"))
    cfn.create_stack(StackName="smallpayroll", TemplateBody=body,
                     Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName="smallpayroll")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in
                cfn.list_stack_resources(StackName="smallpayroll")["StackResourceSummaries"]}
    ec2 = moto_aws.client("ec2")
    # moto's CloudFormation keeps only the volume's size (no zone, type, tags, encryption:
    # those are asserted on the template above)
    (volume,) = ec2.describe_volumes(VolumeIds=[physical["DbDataVolume"]])["Volumes"]
    assert (volume["Size"], volume["State"]) == (20, "available")
    assert physical["DbInstance"].startswith("i-")
