"""`amibake stack plan|deploy|status|delete` against moto's CloudFormation: change sets,
deploys, updates with a new image version, a failed deploy's reason, deletion.

moto neither resolves `{{resolve:ssm:...}}` nor computes replacements or property
details: a hook does the first on the request (the template test's helper), and the
update test asserts the template diff that boto3 sends besides moto's change set."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from builder.aws.iam_policy import STACK_ROLL_ACTIONS
from builder.cli import main
from builder.manifest import Manifest, load_manifest
from builder.stack.changeset import Change, Plan
from builder.stack.deploy import first_failure
from builder.stack.template import GRACE_SECONDS, template
from tests.aws_fixtures import Aws
from tests.stack_fixtures import (
    CERT,
    ROOT,
    SEED,
    SPLIT,
    as_cloudformation_resolves,
    published,
    with_stack,
)

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws

STACK = "smallpayroll"
#: what a new image version changes: the stateless roles' launch templates
ROLLED = {"WebLaunchTemplate", "AppLaunchTemplate"}


def _plain() -> boto3.Session:
    """A session outside the recorder (the test's own set-up calls)."""
    return boto3.Session(region_name="us-east-1")


@pytest.fixture
def cfn_aws(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """The moto-backed clients the verbs use, with CloudFormation's dynamic references
    resolved on the way in (as CloudFormation does, and moto does not)."""
    ssm = _plain().client("ssm")

    def resolve(params: dict[str, Any], **_: Any) -> None:
        if "TemplateBody" in params:
            params["TemplateBody"] = as_cloudformation_resolves(params["TemplateBody"], ssm)

    def outputs_too(**_: Any) -> None:
        """moto keeps the outputs of the template a change-set stack was born with (none):
        recompute them from the executed template, as CloudFormation does."""
        from moto.cloudformation.models import cloudformation_backends
        from moto.core import DEFAULT_ACCOUNT_ID

        for stack in cloudformation_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].stacks.values():
            if not isinstance(stack.template, str):
                continue  # only reviewed, never executed
            stack._parse_template()
            stack.output_map = stack._create_output_map()

    aws.on("before-parameter-build.cloudformation.CreateChangeSet", resolve)
    aws.on("after-call.cloudformation.ExecuteChangeSet", outputs_too)
    monkeypatch.setattr("builder.commands.stack.clients_for", lambda args, m: aws.clients)
    return aws


@pytest.fixture
def cert(cfn_aws: Aws) -> str:
    """A certificate moto knows (its load balancer listener checks)."""
    arn = _plain().client("acm").request_certificate(DomainName="payroll.example.com")
    return str(arn["CertificateArn"])


def split_manifest(tmp_path: Path, cert: str, version: str = "1.0.0") -> tuple[Path, Manifest]:
    """The split manifest at `version`, its image published."""
    base = SEED.read_text().replace("\nversion: 1.0.0\n", f"\nversion: {version}\n")
    path = tmp_path / version / "split.yaml"  # one manifest file, edited: the same name
    path.parent.mkdir()
    path.write_text(with_stack(SPLIT.replace(CERT, cert), base))
    m = load_manifest(path)
    assert str(m.version) == version
    published(_plain(), m)
    return path, m


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _bodies(aws: Aws) -> list[dict[str, Any]]:
    """The templates boto3 sent (before the test's resolution of dynamic references)."""
    return [yaml.safe_load(c.params["TemplateBody"]) for c in
            aws.recorder.of("CreateChangeSet")]


def test_plan_on_a_new_stack_adds_every_resource(cfn_aws: Aws, cert: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, m = split_manifest(tmp_path, cert)
    assert main(["stack", "plan", str(path), "--json"]) == 0
    doc = _json(capsys)
    assert doc["type"] == "CREATE"
    assert {c["action"] for c in doc["changes"]} == {"Add"}
    assert {c["logical_id"] for c in doc["changes"]} == set(template(m)["Resources"])
    (call,) = cfn_aws.recorder.of("CreateChangeSet")
    assert call.params["ChangeSetType"] == "CREATE"
    assert call.params["Capabilities"] == ["CAPABILITY_IAM"]
    # the change set stays for deploy: planning again finds it, creates none
    assert main(["stack", "plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"stack {STACK}: CREATE change set {doc['change_set']}" in text
    assert "Add" in text and "WebLaunchTemplate (AWS::EC2::LaunchTemplate)" in text
    assert len(cfn_aws.recorder.of("CreateChangeSet")) == 1
    # --discard deletes it
    assert main(["stack", "plan", str(path), "--discard", "--json"]) == 0
    assert _json(capsys)["discarded"] is True
    cfn = cfn_aws.clients.client("cloudformation")
    assert cfn.list_change_sets(StackName=STACK)["Summaries"] == []


def test_deploy_creates_the_stack_and_prints_outputs(cfn_aws: Aws, cert: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path, m = split_manifest(tmp_path, cert)
    assert main(["stack", "plan", str(path)]) == 0
    capsys.readouterr()
    assert main(["stack", "deploy", str(path)]) == 0
    captured = capsys.readouterr()
    assert f"stack {STACK}: CREATE_COMPLETE" in captured.out
    site = [line for line in captured.out.splitlines() if "SiteAddress:" in line]
    assert site and site[0].strip().endswith(".elb.amazonaws.com")
    # the line the cutover takes as it is (its switch writes a CNAME to that name)
    assert f"cutover.dns.new_address: {site[0].split()[-1]}" in captured.out.splitlines()[-2]
    assert "SiteAddress is a DNS name: point the site's record at it with a CNAME" \
        in captured.out
    assert "CREATE_COMPLETE" in captured.err  # progress lines from the stack's events
    # the plan's change set was executed: one change set created in all
    assert len(cfn_aws.recorder.of("CreateChangeSet")) == 1
    (execute,) = cfn_aws.recorder.of("ExecuteChangeSet")
    assert ":changeSet/amibake-" in execute.params["ChangeSetName"]
    cfn = cfn_aws.clients.client("cloudformation")
    resources = cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    assert {r["LogicalResourceId"] for r in resources} == set(template(m)["Resources"])

    assert main(["stack", "status", str(path), "--json"]) == 0
    st = _json(capsys)
    assert st["status"] == "CREATE_COMPLETE"
    assert st["outputs"]["DbPrivateName"] == "db.smallpayroll.internal"
    assert st["events"] and st["events"][-1]["ResourceStatus"] == "CREATE_COMPLETE"
    assert main(["stack", "status", str(path)]) == 0  # the line the cutover takes, too
    assert f"cutover.dns.new_address: {st['outputs']['SiteAddress']}" \
        in capsys.readouterr().out.splitlines()

    # the same manifest again: nothing to do, no change set left behind
    assert main(["stack", "deploy", str(path)]) == 0
    assert "up to date, nothing to deploy" in capsys.readouterr().out
    assert len(cfn_aws.recorder.of("ExecuteChangeSet")) == 1
    left = cfn.list_change_sets(StackName=STACK)["Summaries"]  # moto keeps executed ones
    assert [c for c in left if c["ExecutionStatus"] != "EXECUTE_COMPLETE"] == []


def test_new_image_version_changes_the_launch_templates_only(
        cfn_aws: Aws, cert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = split_manifest(tmp_path, cert, "1.0.0")
    assert main(["stack", "deploy", str(first)]) == 0
    second, m2 = split_manifest(tmp_path, cert, "1.1.0")
    capsys.readouterr()
    assert main(["stack", "plan", str(second), "--json"]) == 0
    doc = _json(capsys)
    assert doc["type"] == "UPDATE"
    changed = {c["logical_id"] for c in doc["changes"]}
    assert {c["action"] for c in doc["changes"]} == {"Modify"}
    # the stateless roles' launch templates get a new version; the db (pinned, its data on
    # the instance store) and everything else stay as they are
    assert changed == ROLLED
    old, new = _bodies(cfn_aws)
    differs = {k for k in new["Resources"] if new["Resources"][k] != old["Resources"].get(k)}
    assert differs == ROLLED
    assert new["Resources"]["DbLaunchTemplate"] == old["Resources"]["DbLaunchTemplate"]
    assert set(new["Resources"]) == set(old["Resources"])
    for name in ROLLED:
        before = old["Resources"][name]["Properties"]["LaunchTemplateData"]
        after = new["Resources"][name]["Properties"]["LaunchTemplateData"]
        assert {k for k in after if after[k] != before.get(k)} <= {"ImageId", "UserData"}
        assert after["ImageId"] == "{{resolve:ssm:/amibake/smallpayroll/1.1.0}}"
        # the user-data's marker names the version in a comment line, nothing else changes
        old_lines = base64.b64decode(before["UserData"]).decode().splitlines()
        new_lines = base64.b64decode(after["UserData"]).decode().splitlines()
        assert len(old_lines) == len(new_lines)
        assert all(a == b or (a.startswith("# ") and "1.0.0" in a and "1.1.0" in b)
                   for a, b in zip(old_lines, new_lines, strict=True))
    assert new["Outputs"] == old["Outputs"]
    # the Auto Scaling groups stay on the default version: deploy's instance refresh rolls
    for group in ("WebAutoScalingGroup", "AppAutoScalingGroup"):
        props = new["Resources"][group]["Properties"]
        assert props["LaunchTemplate"]["Version"]["Fn::GetAtt"][1] == "DefaultVersionNumber"
    assert (cfn_aws.recorder.of("CreateChangeSet")[-1].params["ChangeSetType"]) == "UPDATE"
    refreshes = fake_instance_refresh(cfn_aws, "Successful")
    assert main(["stack", "deploy", str(second)]) == 0
    captured = capsys.readouterr()
    assert f"stack {STACK}: UPDATE_COMPLETE" in captured.out
    # each group was refreshed onto version 2, health-checked, with automatic rollback
    starts = cfn_aws.recorder.of("StartInstanceRefresh")
    assert len(starts) == 2 == len(refreshes.groups)
    for call in starts:
        assert call.params["Strategy"] == "Rolling"
        assert call.params["Preferences"] == {
            "MinHealthyPercentage": 100, "MaxHealthyPercentage": 200,
            "InstanceWarmup": GRACE_SECONDS, "SkipMatching": True, "AutoRollback": True,
            "StandbyInstances": "Terminate", "ScaleInProtectedInstances": "Refresh"}
        assert call.params["DesiredConfiguration"]["LaunchTemplate"]["Version"] == "2"
    # rollback returns to the group's saved configuration: version 1 before the refresh
    saved = cfn_aws.recorder.of("UpdateAutoScalingGroup")
    assert [c.params["LaunchTemplate"]["Version"] for c in saved] == ["1", "1"]
    assert "launch template version 1 → 2" in captured.err
    rolled = {c.params["LaunchTemplateId"]: c.params["DefaultVersion"]
              for c in cfn_aws.recorder.of("ModifyLaunchTemplate")}
    assert set(rolled.values()) == {"2"}
    assert {c.params["DesiredConfiguration"]["LaunchTemplate"]["LaunchTemplateId"]
            for c in starts} == set(rolled)
    called = {f"{c.service}:{c.operation}" for c in cfn_aws.recorder.calls}
    assert called >= STACK_ROLL_ACTIONS
    # the db's launch template kept its one version
    db = _plain().client("ec2").describe_launch_template_versions(
        LaunchTemplateName="smallpayroll-db")["LaunchTemplateVersions"]
    assert len(db) == 1
    image = _plain().client("ssm").get_parameter(
        Name=f"/amibake/smallpayroll/{m2.version}")["Parameter"]["Value"]
    versions = _plain().client("ec2").describe_launch_template_versions(
        LaunchTemplateName="smallpayroll-app")["LaunchTemplateVersions"]
    assert image in {v["LaunchTemplateData"].get("ImageId") for v in versions}


@dataclass
class FakeRefresh:
    """moto has no instance refresh: StartInstanceRefresh and DescribeInstanceRefreshes are
    answered before they are sent, every refresh finished with `status`."""

    status: str
    reason: str = ""
    groups: list[str] = field(default_factory=list)


def fake_instance_refresh(aws: Aws, status: str, reason: str = "") -> FakeRefresh:
    from botocore.awsrequest import AWSResponse

    fake = FakeRefresh(status, reason)
    ok = AWSResponse("https://autoscaling.invalid/", 200, {}, None)  # type: ignore[arg-type]

    def start(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        fake.groups.append(params["body"]["AutoScalingGroupName"])  # the query-encoded request
        return ok, {"InstanceRefreshId": f"refresh-{len(fake.groups)}"}

    def describe(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        body = params["body"]
        return ok, {"InstanceRefreshes": [{
            "InstanceRefreshId": body["InstanceRefreshIds.member.1"],
            "AutoScalingGroupName": body["AutoScalingGroupName"], "Status": fake.status,
            "StatusReason": fake.reason, "PercentageComplete": 100}]}

    aws.on("before-call.autoscaling.StartInstanceRefresh", start)
    aws.on("before-call.autoscaling.DescribeInstanceRefreshes", describe)
    return fake


def test_new_instances_failing_health_checks_roll_back(
        cfn_aws: Aws, cert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = split_manifest(tmp_path, cert, "1.0.0")
    assert main(["stack", "deploy", str(first)]) == 0
    assert cfn_aws.recorder.of("StartInstanceRefresh") == []  # a new stack: nothing to roll
    second, _ = split_manifest(tmp_path, cert, "1.1.0")
    reason = "Instances failed to pass the ELB health check"
    fake = fake_instance_refresh(cfn_aws, "RollbackSuccessful", reason)
    capsys.readouterr()
    assert main(["stack", "deploy", str(second)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "AutoScalingGroup" in err and ": instance refresh RollbackSuccessful" in err
    assert "RollbackSuccessful (rolled back to launch template version 1)" in err
    assert reason in err
    assert len(cfn_aws.recorder.of("StartInstanceRefresh")) == 1  # stopped at the first
    assert cfn_aws.recorder.of("ModifyLaunchTemplate") == []  # the new version never default
    assert "Traceback" not in err
    # the same manifest again: nothing for CloudFormation, the refresh is tried again
    fake.status, fake.reason = "Successful", ""
    assert main(["stack", "deploy", str(second)]) == 0
    out = capsys.readouterr()
    assert "up to date, nothing to deploy" in out.out
    assert len(cfn_aws.recorder.of("StartInstanceRefresh")) == 3  # both groups this time
    assert len(cfn_aws.recorder.of("ModifyLaunchTemplate")) == 2


def test_failed_deploy_names_the_failing_resource(cfn_aws: Aws, cert: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """moto runs every resource at once and never rolls back: the answers of a stack whose
    load balancer failed stand in (stubbed DescribeStacks / DescribeStackEvents)."""
    path, _ = split_manifest(tmp_path, cert)
    executed: list[bool] = []
    reason = "The certificate 'arn:...' must have a fully-qualified domain name"

    def after_execute(**_: Any) -> None:
        executed.append(True)

    def stacks(parsed: dict[str, Any], **_: Any) -> None:
        if executed:
            for s in parsed.get("Stacks", []):
                s["StackStatus"] = "ROLLBACK_COMPLETE"

    def events(parsed: dict[str, Any], **_: Any) -> None:
        if not executed:
            return
        stamp = parsed["StackEvents"][0]["Timestamp"]
        made = [
            {"EventId": "e-3", "StackName": STACK, "LogicalResourceId": STACK,
             "ResourceType": "AWS::CloudFormation::Stack", "ResourceStatus": "ROLLBACK_COMPLETE",
             "Timestamp": stamp},
            {"EventId": "e-2", "StackName": STACK, "LogicalResourceId": "WebHttpsListener",
             "ResourceType": "AWS::ElasticLoadBalancingV2::Listener",
             "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "Resource creation "
             "cancelled", "Timestamp": stamp},
            {"EventId": "e-1", "StackName": STACK, "LogicalResourceId": "WebLoadBalancer",
             "ResourceType": "AWS::ElasticLoadBalancingV2::LoadBalancer",
             "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": reason,
             "Timestamp": stamp},
        ]
        parsed["StackEvents"] = made + parsed["StackEvents"]

    cfn_aws.on("after-call.cloudformation.ExecuteChangeSet", after_execute)
    cfn_aws.on("after-call.cloudformation.DescribeStacks", stacks)
    cfn_aws.on("after-call.cloudformation.DescribeStackEvents", events)
    assert main(["stack", "deploy", str(path)]) == 1
    captured = capsys.readouterr()
    (line,) = [x for x in captured.err.splitlines() if "ROLLBACK_COMPLETE:" in x]
    assert "WebLoadBalancer (AWS::ElasticLoadBalancingV2::LoadBalancer) CREATE_FAILED" in line
    assert reason in line
    assert "Traceback" not in captured.err


def test_first_failure_is_the_cause_not_the_echo() -> None:
    events = [{"LogicalResourceId": "A", "StackName": "s", "ResourceStatus": "CREATE_COMPLETE"},
              {"LogicalResourceId": "B", "StackName": "s", "ResourceStatus": "CREATE_FAILED",
               "ResourceStatusReason": "quota"},
              {"LogicalResourceId": "C", "StackName": "s", "ResourceStatus": "CREATE_FAILED",
               "ResourceStatusReason": "Resource creation cancelled"}]
    assert first_failure(events) == events[1]
    assert first_failure(events[:1]) is None


def test_plan_text_marks_replacements() -> None:
    p = Plan(STACK, "UPDATE", "amibake-x", "arn:x", (
        Change("Modify", "AppLaunchTemplate", "AWS::EC2::LaunchTemplate", "False",
               ("LaunchTemplateData",)),
        Change("Modify", "DbInstance", "AWS::EC2::Instance", "True", ("LaunchTemplate",))))
    lines = p.text().splitlines()
    assert "replacement" not in lines[1] and "[LaunchTemplateData]" in lines[1]
    assert "Modify (replacement: True)" in lines[2]
    assert p.as_json()["changes"][1]["replacement"] == "True"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


#: a stack of one resource: moto cannot delete the whole split stack (it deletes the VPC
#: before what is in it), and deleting does not depend on what the stack holds
SMALL = """\
Resources:
  Marker:
    Type: AWS::SSM::Parameter
    Properties: {Name: /amibake/test/marker, Type: String, Value: here}
"""


def test_delete_asks_and_never_touches_the_backup_bucket(
        cfn_aws: Aws, cert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = split_manifest(tmp_path, cert)
    cfn = _plain().client("cloudformation")
    cfn.create_stack(StackName=STACK, TemplateBody=SMALL)
    s3 = _plain().client("s3")
    s3.create_bucket(Bucket="smallpayroll-backups")  # made outside the stack, as backups are

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal, no --yes: refused
    assert main(["stack", "delete", str(path)]) == 1
    assert "without confirmation" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", _Tty("payroll\n"))  # the wrong name: refused
    assert main(["stack", "delete", str(path)]) == 1
    assert "does not match" in capsys.readouterr().err
    assert cfn_aws.recorder.of("DeleteStack") == []
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"

    monkeypatch.setattr("sys.stdin", _Tty(f"{STACK}\n"))
    assert main(["stack", "delete", str(path)]) == 0
    captured = capsys.readouterr()
    assert "type its name to confirm" in captured.err
    assert "DELETE_COMPLETE" in captured.err  # progress from the stack's events
    assert f"stack {STACK} deleted" in captured.out
    ssm = _plain().client("ssm")
    assert ssm.get_parameters(Names=["/amibake/test/marker"])["Parameters"] == []
    assert main(["stack", "status", str(path)]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["smallpayroll-backups"]
    # --yes deletes without asking (here: nothing left, still no error)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["stack", "delete", str(path), "--yes"]) == 0


def test_no_stack_template_creates_a_bucket() -> None:
    """The backup bucket lives outside every stack: deleting a stack cannot delete it."""
    from tests.stack_fixtures import EIP, load

    for section in (SPLIT, EIP):
        kinds = {r["Type"] for r in template(load(section))["Resources"].values()}
        assert not any(k.startswith("AWS::S3::") for k in kinds), kinds
    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        m = load_manifest(path)
        if m.stack is not None:
            kinds = {r["Type"] for r in template(m)["Resources"].values()}
            assert not any(k.startswith("AWS::S3::") for k in kinds), path


def test_verbs_need_a_stack_section(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_aws(*_: Any) -> Any:
        raise AssertionError("no AWS call without a stack section")

    monkeypatch.setattr("builder.commands.stack.clients_for", no_aws)
    bare = tmp_path / "bare.yaml"
    bare.write_text(with_stack(""))
    for action in ("plan", "deploy", "status", "delete"):
        assert main(["stack", action, str(bare), "--yes"]) == 1
        assert "has no `stack:` section" in capsys.readouterr().err


def test_cutover_takes_the_site_address_from_the_stack(
        cfn_aws: Aws, cert: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cutover … --from-stack`: dns.new_address is the deployed stack's SiteAddress (the
    load balancer's DNS name), so the switch writes a CNAME; no stack → one line."""
    path, _ = split_manifest(tmp_path, cert)
    ssm = _plain().client("ssm")
    for name in ("/smallpayroll/old-db-superuser-password",
                 "/smallpayroll/new-db-superuser-password"):
        ssm.put_parameter(Name=name, Value="not-used", Type="SecureString")
    dry = ["cutover", "run", str(path), "--dry-run", "--from-stack", "--json",
           "--state", str(tmp_path / "state.json")]
    assert main(dry) == 1
    no_stack = _json(capsys)
    assert no_stack["error"] == "stack smallpayroll has no SiteAddress output (does not exist)"
    assert main(["stack", "deploy", str(path), "--json"]) == 0
    site = _json(capsys)["outputs"]["SiteAddress"]
    assert site.endswith(".elb.amazonaws.com")
    assert main(dry) == 0
    rows = {r["step"]: r["would"] for r in _json(capsys)["dry_run"]}
    assert rows["dns_switch"].startswith(f"payroll.example.com. → {site} (CNAME record")
    assert main(dry[:-3]) == 0  # without --json: the address and where it came from
    assert f"dns.new_address: {site} (stack smallpayroll's SiteAddress)" \
        in capsys.readouterr().err
