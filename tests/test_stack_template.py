"""The CloudFormation template of a manifest's stack: what it wires, cfn-lint's verdict,
and a deploy into moto's CloudFormation."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from builder.cli import main
from builder.manifest import load_manifest
from builder.render import split_user_data
from builder.stack.template import GRACE_SECONDS, template, template_yaml
from tests.aws_fixtures import AWS_ENV
from tests.stack_fixtures import (
    CERT,
    EIP,
    ROOT,
    SPLIT,
    as_cloudformation_resolves,
    load,
    published,
    with_stack,
)

#: cfn-lint rules left out, each with its reason (none: the templates lint clean,
#: informational rules included).
IGNORED_RULES: dict[str, str] = {}


def _of(tpl: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == kind}


def _ingress(tpl: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    """(group, from, to, source group or CIDR) of every ingress rule."""
    rules = set()
    for rule in _of(tpl, "AWS::EC2::SecurityGroupIngress").values():
        p = rule["Properties"]
        source = p.get("SourceSecurityGroupId", {}).get("Fn::GetAtt", [None])[0] \
            or p.get("CidrIp") or p.get("CidrIpv6")
        rules.add((p["GroupId"]["Fn::GetAtt"][0], p["FromPort"], p["ToPort"], source))
    return rules


def test_security_groups_reference_each_other() -> None:
    tpl = template(load(SPLIT))
    assert _ingress(tpl) == {
        ("WebLoadBalancerSecurityGroup", 80, 80, "0.0.0.0/0"),
        ("WebLoadBalancerSecurityGroup", 443, 443, "0.0.0.0/0"),
        ("WebSecurityGroup", 80, 80, "WebLoadBalancerSecurityGroup"),
        ("AppInternalLoadBalancerSecurityGroup", 8000, 8002, "WebSecurityGroup"),
        ("AppSecurityGroup", 8000, 8002, "AppInternalLoadBalancerSecurityGroup"),
        ("DbSecurityGroup", 5432, 5432, "AppSecurityGroup"),
        ("WebSecurityGroup", 22, 22, "198.51.100.7/32"),
        ("AppSecurityGroup", 22, 22, "198.51.100.7/32"),
        ("DbSecurityGroup", 22, 22, "198.51.100.7/32"),
    }


def test_web_without_load_balancer_is_open_on_nginx_only() -> None:
    rules = _ingress(template(load(EIP)))
    assert ("WebSecurityGroup", 80, 80, "0.0.0.0/0") in rules
    assert not any(port == 22 for _, port, _, _ in rules)  # no ssh_cidr: no SSH at all
    assert not any(src == "0.0.0.0/0" for group, _, _, src in rules if group != "WebSecurityGroup")


def _user_data(tpl: dict[str, Any], role: str) -> str:
    lt = tpl["Resources"][f"{role}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    parts = split_user_data(base64.b64decode(lt["UserData"]))
    return "".join(p.content.decode() for p in parts)


def test_launch_templates_take_the_published_image_and_the_baked_marker() -> None:
    m = load(SPLIT)
    tpl = template(m)
    for role in ("Web", "App", "Db"):
        data = tpl["Resources"][f"{role}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
        assert data["ImageId"] == "{{resolve:ssm:/amibake/smallpayroll/1.0.0}}"
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        text = _user_data(tpl, role)
        assert f"# amibake-role: {role.lower()}\n" in text
        assert "packages:" not in text  # baked: the marker, not the components
    assert 'AMIBAKE_HOSTS_APP="app.smallpayroll.internal"' in _user_data(tpl, "Web")
    assert 'AMIBAKE_HOSTS_DB="db.smallpayroll.internal"' in _user_data(tpl, "App")
    assert "AMIBAKE_HOSTS" not in _user_data(tpl, "Db")
    db = tpl["Resources"]["DbLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert db["InstanceType"] == "m5d.large"
    assert db["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    latest = template(load(EIP))["Resources"]["WebLaunchTemplate"]["Properties"]
    assert latest["LaunchTemplateData"]["ImageId"] == \
        "{{resolve:ssm:/amibake/smallpayroll/latest}}"
    assert latest["LaunchTemplateData"]["KeyName"] == "payroll-admin"


def test_instance_profiles_read_only_their_secrets() -> None:
    tpl = template(load(SPLIT))
    roles = _of(tpl, "AWS::IAM::Role")
    assert "Policies" not in roles["WebInstanceRole"]["Properties"]
    for name in ("AppInstanceRole", "DbInstanceRole"):
        (policy,) = roles[name]["Properties"]["Policies"]
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert statement["Action"] == ["ssm:GetParameter"]
        assert statement["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:"
                                                     "${AWS::AccountId}:parameter/smallpayroll/"
                                                     "db-password"}]


def test_fleet_rolls_and_db_is_one_instance() -> None:
    tpl = template(load(SPLIT))
    groups = _of(tpl, "AWS::AutoScaling::AutoScalingGroup")
    assert set(groups) == {"WebAutoScalingGroup", "AppAutoScalingGroup"}
    app = groups["AppAutoScalingGroup"]
    assert (app["Properties"]["MinSize"], app["Properties"]["MaxSize"],
            app["Properties"]["DesiredCapacity"]) == ("2", "4", "3")
    for group in groups.values():
        props = group["Properties"]
        # the load balancer's health check decides, after the grace period; a new version
        # is rolled by `stack deploy`'s instance refresh, never by CloudFormation unchecked
        assert props["HealthCheckType"] == "ELB"
        assert props["HealthCheckGracePeriod"] == GRACE_SECONDS
        assert props["TargetGroupARNs"]
        assert props["LaunchTemplate"]["Version"]["Fn::GetAtt"][1] == "DefaultVersionNumber"
        assert "UpdatePolicy" not in group
    assert set(_of(tpl, "AWS::EC2::Instance")) == {"DbInstance"}
    assert tpl["Resources"]["DbInstance"]["UpdateReplacePolicy"] == "Retain"


def test_db_image_is_pinned_and_others_follow_the_version() -> None:
    tpl = template(load(SPLIT.replace("image_version: 1.0.0", "image_version: 0.9.0")))
    data = {name: tpl["Resources"][f"{name}LaunchTemplate"]["Properties"]["LaunchTemplateData"]
            for name in ("Web", "App", "Db")}
    assert data["Db"]["ImageId"] == "{{resolve:ssm:/amibake/smallpayroll/0.9.0}}"
    assert data["Web"]["ImageId"] == data["App"]["ImageId"] == \
        "{{resolve:ssm:/amibake/smallpayroll/1.0.0}}"
    # the db's role marker names its own version, not the manifest's
    marker = base64.b64decode(data["Db"]["UserData"]).decode()
    assert "0.9.0" in marker and "1.0.0" not in marker


def test_tls_redirects_http_and_serves_the_certificate() -> None:
    tpl = template(load(SPLIT))
    http = tpl["Resources"]["WebHttpListener"]["Properties"]
    https = tpl["Resources"]["WebHttpsListener"]["Properties"]
    assert http["DefaultActions"][0]["Type"] == "redirect"
    assert http["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"
    assert https["Certificates"] == [{"CertificateArn": CERT}]
    tg = tpl["Resources"]["WebTargetGroup"]["Properties"]
    assert (tg["Port"], tg["HealthCheckPath"]) == (80, "/health")
    assert tpl["Outputs"]["SiteAddress"]["Value"] == {"Fn::GetAtt": ["WebLoadBalancer", "DNSName"]}


def test_elastic_ip_is_the_site_address() -> None:
    tpl = template(load(EIP))
    assert "WebLoadBalancer" not in tpl["Resources"]
    eip = tpl["Resources"]["WebElasticIp"]["Properties"]
    assert eip["InstanceId"] == {"Ref": "WebInstance"}
    assert tpl["Outputs"]["SiteAddress"]["Value"] == {"Ref": "WebElasticIp"}
    assert "Vpc" not in tpl["Resources"]  # an existing VPC
    zone = tpl["Resources"]["PrivateZone"]["Properties"]
    assert zone["Name"] == "payroll-eip.internal"
    assert zone["VPCs"][0]["VPCId"] == "vpc-0123456789abcdef0"


def test_private_names() -> None:
    tpl = template(load(SPLIT))
    records = {r["Properties"]["Name"]: r["Properties"]
               for r in _of(tpl, "AWS::Route53::RecordSet").values()}
    assert set(records) == {"app.smallpayroll.internal.", "db.smallpayroll.internal."}
    assert records["db.smallpayroll.internal."]["ResourceRecords"] == [
        {"Fn::GetAtt": ["DbInstance", "PrivateIp"]}]
    assert records["app.smallpayroll.internal."]["AliasTarget"]["DNSName"] == {
        "Fn::GetAtt": ["AppInternalLoadBalancer", "DNSName"]}


def test_yaml_is_deterministic_and_plain() -> None:
    m = load(SPLIT)
    first, second = template_yaml(m), template_yaml(load(SPLIT))
    assert first == second
    assert "&id" not in first and "*id" not in first  # no YAML anchors
    assert yaml.safe_load(first) == template(m)


def _stack_manifests(tmp: Path) -> Iterator[Path]:
    """Every manifest in manifests/ with a stack section, and the test variants."""
    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        if load_manifest(path).stack is not None:
            yield path
    for name, section in (("split", SPLIT), ("eip", EIP)):
        path = tmp / f"{name}.yaml"
        path.write_text(with_stack(section))
        yield path


def test_cfn_lint_passes_every_stack(tmp_path: Path) -> None:
    from cfnlint.api import ManualArgs, lint

    config = ManualArgs(regions=["us-east-1"], include_checks=["I"],
                        ignore_checks=sorted(IGNORED_RULES))
    linted = 0
    for path in _stack_manifests(tmp_path):
        matches = lint(template_yaml(load_manifest(path)), config=config)
        assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == [], path
        linted += 1
    assert linted >= 2


def test_verb_writes_the_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "split.yaml"
    manifest.write_text(with_stack(SPLIT))
    out = tmp_path / "stack.yaml"
    assert main(["stack", "template", str(manifest), "--out", str(out)]) == 0
    assert out.read_text() == template_yaml(load_manifest(manifest))
    assert "stack smallpayroll" in capsys.readouterr().out
    bare = tmp_path / "bare.yaml"
    bare.write_text(with_stack(""))
    assert main(["stack", "template", str(bare), "--json"]) == 1
    assert "has no `stack:` section" in capsys.readouterr().out  # --json: errors as JSON


# ------------------------------------------------------------------ moto

@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.Session(region_name="us-east-1")


def test_deploys_into_moto(moto_aws: boto3.Session) -> None:
    cert = moto_aws.client("acm").request_certificate(
        DomainName="payroll.example.com")["CertificateArn"]
    m = load(SPLIT.replace(CERT, cert))
    image = published(moto_aws, m)
    cfn = moto_aws.client("cloudformation")
    body = as_cloudformation_resolves(template_yaml(m), moto_aws.client("ssm"))
    cfn.create_stack(StackName="smallpayroll", TemplateBody=body,
                     Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName="smallpayroll")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    resources = {r["LogicalResourceId"]: r for r in
                 cfn.list_stack_resources(StackName="smallpayroll")["StackResourceSummaries"]}
    assert set(resources) == set(template(m)["Resources"])
    physical = {k: r["PhysicalResourceId"] for k, r in resources.items()}

    ec2 = moto_aws.client("ec2")
    vpc = ec2.describe_vpcs(VpcIds=[physical["Vpc"]])["Vpcs"][0]
    assert vpc["CidrBlock"] == "10.0.0.0/16"
    subnets = ec2.describe_subnets(SubnetIds=[physical["SubnetA"], physical["SubnetB"]])
    assert sorted(s["CidrBlock"] for s in subnets["Subnets"]) == ["10.0.0.0/17", "10.0.128.0/17"]

    groups = {g["GroupId"]: g for g in ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [physical["Vpc"]]}])["SecurityGroups"]}
    db = groups[physical["DbSecurityGroup"]]
    from_app = [p for p in db["IpPermissions"] if p["FromPort"] == 5432]
    assert [pair["GroupId"] for p in from_app for pair in p["UserIdGroupPairs"]] == \
        [physical["AppSecurityGroup"]]
    ssh = [p for p in db["IpPermissions"] if p["FromPort"] == 22]
    assert [r["CidrIp"] for p in ssh for r in p["IpRanges"]] == ["198.51.100.7/32"]

    versions = ec2.describe_launch_template_versions(
        LaunchTemplateName="smallpayroll-app")["LaunchTemplateVersions"]
    data = versions[0]["LaunchTemplateData"]
    assert data["ImageId"] == image
    assert data["InstanceType"] == "t3.small"
    assert b"# amibake-role: app\n" in base64.b64decode(data["UserData"])

    asg = moto_aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[physical["AppAutoScalingGroup"]])["AutoScalingGroups"][0]
    assert (asg["MinSize"], asg["MaxSize"], asg["DesiredCapacity"]) == (2, 4, 3)
    assert asg["LaunchTemplate"]["LaunchTemplateId"] == physical["AppLaunchTemplate"]
    assert len(asg["TargetGroupARNs"]) == 3  # one per app server port

    (db_instance,) = [i for r in ec2.describe_instances(
        InstanceIds=[physical["DbInstance"]])["Reservations"] for i in r["Instances"]]
    assert (db_instance["ImageId"], db_instance["InstanceType"]) == (image, "m5d.large")
    assert db_instance["SubnetId"] == physical["SubnetA"]

    elb = moto_aws.client("elbv2")
    listeners = elb.describe_listeners(LoadBalancerArn=physical["WebLoadBalancer"])["Listeners"]
    by_port = {x["Port"]: x for x in listeners}
    assert by_port[80]["DefaultActions"][0]["Type"] == "redirect"
    assert by_port[443]["Certificates"][0]["CertificateArn"] == cert
    tg = elb.describe_target_groups(TargetGroupArns=[physical["WebTargetGroup"]])
    assert tg["TargetGroups"][0]["HealthCheckPath"] == "/health"

    r53 = moto_aws.client("route53")
    zone_id = physical["PrivateZone"]
    zone = r53.get_hosted_zone(Id=zone_id)
    assert zone["HostedZone"]["Name"].rstrip(".") == "smallpayroll.internal"
    # moto's CloudFormation drops the zone's VPCs (it comes out public): the request has them
    assert template(m)["Resources"]["PrivateZone"]["Properties"]["VPCs"] == [
        {"VPCId": {"Ref": "Vpc"}, "VPCRegion": {"Ref": "AWS::Region"}}]
    records = {r["Name"]: r for r in r53.list_resource_record_sets(
        HostedZoneId=zone_id)["ResourceRecordSets"]}
    assert records["db.smallpayroll.internal."]["ResourceRecords"] == [
        {"Value": db_instance["PrivateIpAddress"]}]
    assert "app.smallpayroll.internal." in records

    iam = moto_aws.client("iam")
    policy = iam.get_role_policy(RoleName=physical["AppInstanceRole"],
                                 PolicyName="amibake-instance")
    # moto's CloudFormation keeps the policy as the Python text of the resolved document
    document = str(policy["PolicyDocument"])
    assert "ssm:GetParameter" in document
    assert ":parameter/smallpayroll/db-password" in document
    assert "secretsmanager" not in document

    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["SiteAddress"].endswith(".elb.amazonaws.com")
    assert outputs["DbPrivateName"] == "db.smallpayroll.internal"
