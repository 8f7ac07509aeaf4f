"""The IAM policy lists exactly the operations the code calls: every path of
publish, life cycle and launch is driven against moto while botocore events
record each operation, and the two sets must be equal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from builder.aws.iam_policy import (
    IMPLIED,
    LAUNCH_ACTIONS,
    PUBLISH_ACTIONS,
    STACK_ACTIONS,
    STACK_ROLL_ACTIONS,
    action_name,
    policy_document,
)
from builder.aws.launch import launch_aws
from builder.cli import main
from builder.manifest import Manifest
from builder.publish.lifecycle import deprecate, gc, parse_when, prune
from tests.aws_fixtures import (
    Aws,
    fake_response,
    make_stored_image,
)
from tests.test_aws_instance_profile import ebs_manifest
from tests.test_aws_launch import drop_instance_store_mapping, published_ami
from tests.test_publish_ebs import fast_steps, make_ctx
from tests.test_publish_lifecycle import publish_versions
from tests.test_stack_deploy import SMALL, cert, cfn_aws, split_manifest  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest


def recorded(aws: Aws) -> set[str]:
    return {action_name(s, op) for s, op in aws.recorder.operations()}


def test_publish_policy_equals_the_calls_made(aws: Aws, store: Path, manifest: Manifest,
                                              tmp_path: Path) -> None:
    from builder.publish.run import publish

    # resume path (ListSnapshotBlocks): crash once, then publish
    def crash(context: dict[str, Any], **_: Any) -> Any:
        if context["amibake_params"]["BlockIndex"] == 7:
            raise RuntimeError("crash")
        return None

    from builder.publish.snapshot_upload import UploadOptions, upload_disk
    image_dir = store / "smallpayroll" / "1.0.0"
    ebs = aws.clients.ebs()
    ebs.meta.events.register("before-call.ebs.PutSnapshotBlock", crash)
    with pytest.raises(RuntimeError):
        meta = json.loads((image_dir / "image.json").read_text())
        upload_disk(ebs, aws.clients.ec2(), image_dir / "disk.raw",
                    disk_digest=meta["disk"]["digest"],
                    requested_gib=4, options=UploadOptions(concurrency=1), sleep=lambda _s: None)
    ebs.meta.events.unregister("before-call.ebs.PutSnapshotBlock", crash)
    publish_versions(aws, store, manifest, ["1.0.0", "1.1.0", "1.2.0"])
    aws.clients.ec2().create_launch_template(LaunchTemplateName="t",
                                             LaunchTemplateData={"ImageId": "ami-12345678"})
    aws.on("before-call.ec2.EnableImageDeprecation", lambda **_: fake_response({"Return": True}))
    regions = ("us-east-1", "eu-west-1")
    deprecate(aws.clients, regions, "smallpayroll", "1.0.0", parse_when("2099-01-01"))
    prune(aws.clients, regions, "smallpayroll", keep=1)
    gc(aws.clients, regions, min_age_seconds=0)
    # a failed publish (cleanup path: DeregisterImage, DeleteSnapshot, DeleteParameter)
    make_stored_image(store, version="1.3.0", seed=3)

    class Boom(Exception):
        pass

    steps = fast_steps()

    class FailAfterSsm:
        name = "fail"

        def describe(self, ctx: Any) -> str:
            return ""

        def run(self, ctx: Any) -> None:
            raise Boom

        def cleanup(self, ctx: Any, outcome: Any) -> None:
            return None

    steps.insert(-1, FailAfterSsm())
    with pytest.raises(Boom):
        publish(make_ctx(aws, store, manifest, version="1.3.0"), steps)
    made_by_this_test = {"ec2:CreateLaunchTemplate"}
    assert recorded(aws) - made_by_this_test == PUBLISH_ACTIONS


def test_launch_policy_equals_the_calls_made(aws: Aws, manifest: Manifest,
                                             tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ami = published_ami(aws)
    aws.recorder.clear()
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    launch_aws(aws.clients, manifest, "db", ssh_cidr="203.0.113.7", key_dir=tmp_path / "k")
    # a second caller: the first one's SSH rule is revoked
    launch_aws(aws.clients, manifest, "db", ssh_cidr="203.0.113.8", key_dir=tmp_path / "k")
    pub = tmp_path / "id.pub"
    pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))

    def fail_wait(parsed: dict[str, Any], **_: Any) -> None:
        for res in parsed.get("Reservations", []):
            for inst in res["Instances"]:
                if inst["State"]["Name"] == "running" and inst.get("KeyName") == "other":
                    inst["State"]["Name"] = "terminated"

    aws.on("after-call.ec2.DescribeInstances", fail_wait)
    with pytest.raises(Exception, match="terminated"):
        launch_aws(aws.clients, manifest, "web", ssh_cidr="203.0.113.7", public_key=pub,
                   key_name="other", key_dir=tmp_path / "k")
    # a db role on EBS (another stack) whose instance dies: its new instance profile and
    # data volume are made, then removed
    other = ebs_manifest(name="payroll-two")
    with pytest.raises(Exception, match="terminated"):
        launch_aws(aws.clients, other, "db", ssh_cidr="203.0.113.7", public_key=pub,
                   key_name="other", key_dir=tmp_path / "k", image_id=ami)
    assert recorded(aws) == LAUNCH_ACTIONS


def test_stack_policy_equals_the_calls_made(cfn_aws: Aws, cert: str,  # noqa: F811
                                            tmp_path: Path) -> None:
    import boto3

    from builder.stack.deploy import delete

    path, _ = split_manifest(tmp_path, cert)
    for verb in (["plan"], ["deploy"], ["deploy"], ["status"]):  # 2nd: no change
        assert main(["stack", verb[0], str(path), *verb[1:]]) == 0
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="other", TemplateBody=SMALL)
    assert delete(cfn_aws.clients.client("cloudformation"), "other", say=lambda _: None,
                  sleep=lambda _: None)
    # the instance refresh's calls are recorded by test_stack_deploy's rolling test
    assert recorded(cfn_aws) == STACK_ACTIONS - STACK_ROLL_ACTIONS


def test_policy_document_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    doc = policy_document(publish=True, launch=False)
    (statement,) = doc["Statement"]
    assert set(statement["Action"]) == PUBLISH_ACTIONS
    assert main(["iam-policy", "--launch", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    actions = {a for s in printed["Statement"] for a in s["Action"]}
    assert actions == LAUNCH_ACTIONS | set(IMPLIED["launch"])
    assert main(["iam-policy", "--stack", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {a for s in printed["Statement"] for a in s["Action"]} == \
        STACK_ACTIONS | set(IMPLIED["stack"])
    assert main(["iam-policy"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert {a for s in both["Statement"] for a in s["Action"]} >= PUBLISH_ACTIONS | STACK_ACTIONS
    assert not any(a.startswith("kms:") for s in both["Statement"] for a in s["Action"])
    assert main(["iam-policy", "--publish", "--kms"]) == 0
    with_kms = json.loads(capsys.readouterr().out)
    grants = [s for s in with_kms["Statement"] if s["Action"] == ["kms:CreateGrant"]]
    assert grants[0]["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_every_client_method_in_the_code_is_in_a_policy() -> None:
    """A static cross-check: method calls on clients in builder/aws + builder/publish."""
    import botocore.session

    ops = {}
    session = botocore.session.get_session()
    for service in ("ec2", "ebs", "ssm", "sts", "cloudformation", "autoscaling", "iam"):
        model = session.get_service_model(service)
        for op in model.operation_names:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()
            ops[snake] = action_name(service, op)
    found = set()
    for path in [*ROOT.glob("builder/aws/*.py"), *ROOT.glob("builder/publish/*.py"),
                 *ROOT.glob("builder/stack/*.py")]:
        for name in re.findall(r"\.([a-z_]+)\b", path.read_text()):
            if name in ops and name not in {"get_paginator", "get_waiter"}:
                found.add(ops[name])
    # paginators / waiters call these
    found |= {"ec2:DescribeInstances", "ec2:DescribeLaunchTemplates",
              "cloudformation:ListStackResources"}
    all_actions = PUBLISH_ACTIONS | LAUNCH_ACTIONS | STACK_ACTIONS
    assert found - all_actions == set(), found - all_actions
    assert all_actions - found == set(), all_actions - found
