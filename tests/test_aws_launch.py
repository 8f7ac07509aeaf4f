"""launch_aws against moto: the run_instances request, key file, security group."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from builder.aws.launch import launch_aws, role_ports
from builder.errors import UserError
from builder.manifest import Manifest
from tests.aws_fixtures import (
    Aws,
)

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest


def published_ami(aws: Aws) -> str:
    ec2 = aws.clients.ec2()
    ami = ec2.register_image(Name="smallpayroll-1.0.0")["ImageId"]
    aws.clients.ssm().put_parameter(Name="/amibake/smallpayroll/latest", Value=ami,
                                    Type="String", DataType="aws:ec2:image")
    return ami


def drop_instance_store_mapping(params: dict[str, Any], **_: Any) -> None:
    """moto gap: it rejects an instance-store mapping without `Ebs`, which AWS
    accepts. The request as boto3 built it is recorded before this runs."""
    body = params["body"]
    for key in [k for k in body if k.startswith("BlockDeviceMapping.")]:
        del body[key]


def test_launch_db_role(aws: Aws, manifest: Manifest, tmp_path: Path) -> None:
    ami = published_ami(aws)
    aws.on("before-call.ec2.RunInstances", drop_instance_store_mapping)
    result = launch_aws(aws.clients, manifest, "db", ssh_cidr="203.0.113.7",
                        key_dir=tmp_path / "keys")
    (run,) = aws.recorder.of("RunInstances")
    p = run.params
    assert p["ImageId"] == ami
    assert p["MetadataOptions"]["HttpTokens"] == "required"
    assert p["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    user_data = p["UserData"]
    assert b"# amibake-role: db" in (user_data if isinstance(user_data, bytes)
                                     else user_data.encode())
    (spec,) = [s for s in p["TagSpecifications"] if s["ResourceType"] == "instance"]
    assert {"Key": "Role", "Value": "db"} in spec["Tags"]
    assert p["BlockDeviceMappings"] == [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    assert p["InstanceType"] == manifest.roles["db"].instance_type

    # moto read-back: instance, user-data, tags, metadata options
    ec2 = aws.clients.ec2()
    inst = ec2.describe_instances(InstanceIds=[result.instance_id])["Reservations"][0][
        "Instances"][0]
    assert inst["State"]["Name"] == "running"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    attr = ec2.describe_instance_attribute(InstanceId=result.instance_id, Attribute="userData")
    assert b"# amibake-role: db" in base64.b64decode(attr["UserData"]["Value"])

    # key file 0600, never in the JSON
    key = Path(result.key_file)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = key.read_text()
    assert "PRIVATE KEY" in material
    assert material.strip().splitlines()[1] not in json.dumps(result.as_json())

    # SG: SSH only from the /32; postgres only from the app network
    (sg,) = ec2.describe_security_groups(GroupIds=[result.security_group_id])["SecurityGroups"]
    rules = {(r["FromPort"], r["IpRanges"][0]["CidrIp"]) for r in sg["IpPermissions"]}
    assert (22, "203.0.113.7/32") in rules
    assert (5432, manifest.app.database.network) in rules
    assert all(cidr != "0.0.0.0/0" for port, cidr in rules if port == 22)
    assert result.hosts_line == f"{result.public_ip} {manifest.app.server_name}"
    assert result.ssh_command == f"ssh -i {key} admin@{result.public_ip}"


def test_launch_web_opens_http_and_imports_a_public_key(aws: Aws, manifest: Manifest,
                                                        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = tmp_path / "id.pub"
    pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" me@here\n")
    published_ami(aws)
    result = launch_aws(aws.clients, manifest, "web", ssh_cidr="198.51.100.1/32",
                        public_key=pub, key_name="mine", key_dir=tmp_path / "keys")
    assert result.key_file == "" and not (tmp_path / "keys").exists()
    assert aws.recorder.of("ImportKeyPair") and not aws.recorder.of("CreateKeyPair")
    (sg,) = aws.clients.ec2().describe_security_groups(
        GroupIds=[result.security_group_id])["SecurityGroups"]
    rules = {(r["FromPort"], r["IpRanges"][0]["CidrIp"]) for r in sg["IpPermissions"]}
    assert (80, "0.0.0.0/0") in rules and (22, "198.51.100.1/32") in rules
    (run,) = aws.recorder.of("RunInstances")
    assert "BlockDeviceMappings" not in run.params


def test_ssh_cidr_must_be_one_address(aws: Aws, manifest: Manifest, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMIBAKE_SSH_CIDR", raising=False)
    with pytest.raises(UserError, match="cannot tell your public IP") as err:
        launch_aws(aws.clients, manifest, "web", key_dir=tmp_path)
    assert "--ssh-cidr" in err.value.hint
    with pytest.raises(UserError, match="opens SSH to 256 addresses"):
        launch_aws(aws.clients, manifest, "web", ssh_cidr="10.0.0.0/24", key_dir=tmp_path)
    assert not aws.recorder.of("RunInstances")


def test_failed_launch_removes_key_and_group(aws: Aws, manifest: Manifest,
                                             tmp_path: Path) -> None:
    from tests.aws_fixtures import error_response

    published_ami(aws)
    aws.on("before-call.ec2.RunInstances",
           lambda **_: error_response("InsufficientInstanceCapacity", 500))
    with pytest.raises(Exception, match="InsufficientInstanceCapacity"):
        launch_aws(aws.clients, manifest, "web", ssh_cidr="203.0.113.7",
                   key_dir=tmp_path / "keys")
    ec2 = aws.clients.ec2()
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    groups = ec2.describe_security_groups()["SecurityGroups"]
    assert [g["GroupName"] for g in groups if g["GroupName"].startswith("amibake")] == []
    assert list((tmp_path / "keys").glob("*")) == []


def _ingress(aws: Aws, group_id: str) -> set[tuple[int, int, str]]:
    (sg,) = aws.clients.ec2().describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    rules = set()
    for perm in sg["IpPermissions"]:
        for rng in perm.get("IpRanges", []):
            rules.add((perm["FromPort"], perm["ToPort"], rng["CidrIp"]))
        for rng in perm.get("Ipv6Ranges", []):
            rules.add((perm["FromPort"], perm["ToPort"], rng["CidrIpv6"]))
    return rules


def test_second_launch_revokes_the_first_callers_ssh(aws: Aws, manifest: Manifest,
                                                     tmp_path: Path) -> None:
    """The role's group is reused, and its ingress is reconciled to exactly what
    this launch asks for: the previous caller's /32 (and a rule added by hand)
    are revoked, not left open."""
    published_ami(aws)
    first = launch_aws(aws.clients, manifest, "web", ssh_cidr="203.0.113.7",
                       key_dir=tmp_path / "keys")
    assert (22, 22, "203.0.113.7/32") in _ingress(aws, first.security_group_id)
    aws.clients.ec2().authorize_security_group_ingress(
        GroupId=first.security_group_id,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 1000, "ToPort": 2000,
                        "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    second = launch_aws(aws.clients, manifest, "web", ssh_cidr="198.51.100.9/32",
                        key_dir=tmp_path / "keys")
    assert second.security_group_id == first.security_group_id
    ports = {(p, p, "0.0.0.0/0") for p, cidr in role_ports(manifest, "web")}
    assert _ingress(aws, second.security_group_id) == {(22, 22, "198.51.100.9/32"), *ports}
    (revoke,) = aws.recorder.of("RevokeSecurityGroupIngress")
    assert len(revoke.params["IpPermissions"]) == 2


def test_ipv6_ssh_address_is_one_ipv6_rule(aws: Aws, manifest: Manifest,
                                          tmp_path: Path) -> None:
    published_ami(aws)
    result = launch_aws(aws.clients, manifest, "web", ssh_cidr="2001:db8::7",
                        key_dir=tmp_path / "keys")
    rules = _ingress(aws, result.security_group_id)
    assert (22, 22, "2001:db8::7/128") in rules
    assert not any(port == 22 and cidr != "2001:db8::7/128" for port, _, cidr in rules)
    with pytest.raises(UserError, match="opens SSH to 18446744073709551616 addresses") as err:
        launch_aws(aws.clients, manifest, "web", ssh_cidr="2001:db8::/64", key_dir=tmp_path)
    assert "/128" in err.value.hint


@pytest.mark.parametrize("content", [None, b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", b""])
def test_public_key_that_is_missing_or_not_public_is_one_line(
        aws: Aws, manifest: Manifest, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        content: bytes | None) -> None:
    from builder.cli import main

    published_ami(aws)
    key = tmp_path / "id.pub"
    if content is not None:
        key.write_bytes(content)
    code = main(["launch", "web", "--target", "aws", "--manifest",
                 str(manifest.source), "--ssh-cidr", "203.0.113.7", "--public-key", str(key)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and f"public key {key}" in err
    assert not aws.recorder.of("ImportKeyPair") and not aws.recorder.of("RunInstances")
    assert not aws.recorder.of("CreateSecurityGroup")
