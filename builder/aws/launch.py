"""Start an instance of a published image in a role on AWS.

Key pair (create, or import the user's public key; a created private key is
written 0600 and never printed), a security group whose ingress is exactly
SSH from the caller's one address (IPv4 /32 or IPv6 /128) plus the role's
service ports (rules a previous launch added and this one does not ask for
are revoked), run_instances with IMDSv2
required (hop limit 1), the role in user-data and the `Role` tag, the
instance-store mapping the db role needs. An instance profile with the
role's policy (builder/aws/instance_profile.py: made or reused, or
`instance_profile` given), and for `storage: ebs` the role's data volume
(builder/aws/data_volume.py: the instance starts in its zone, or one is made
in the instance's zone). Waits until running. A failed launch removes what
it created.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from builder.aws.clients import Clients, error_code
from builder.aws.data_volume import create_volume, delete_volume, find_volume
from builder.aws.instance_policy import instance_tags
from builder.aws.instance_profile import check_profile_name, ensure_instance_profile
from builder.db_storage.volume import ebs_roles
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.ssh_keys import read_public_key
from builder.wait import NotYet, Waiter, wait_for

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef, IpPermissionTypeDef, TagTypeDef

RUNNING_WAITER = Waiter("the instance to be running", attempts=120, interval=5.0)
#: a new instance profile takes a few seconds before EC2 accepts it
PROFILE_WAITER = Waiter("EC2 to accept the new instance profile", attempts=20, interval=3.0)


@dataclass(frozen=True)
class LaunchResult:
    instance_id: str
    image_id: str
    role: str
    region: str
    public_ip: str
    key_name: str
    key_file: str  # "" when the user's own key was imported
    security_group_id: str
    ssh_command: str
    hosts_line: str
    instance_profile: str = ""  # "" when the role needs no permission
    data_volume: str = ""  # the `storage: ebs` volume

    def as_json(self) -> dict[str, str]:
        # the private key itself is never part of any output, only its path
        return {
            "instance_id": self.instance_id, "image_id": self.image_id, "role": self.role,
            "region": self.region, "public_ip": self.public_ip, "key_name": self.key_name,
            "key_file": self.key_file, "security_group_id": self.security_group_id,
            "ssh_command": self.ssh_command, "hosts_line": self.hosts_line,
            "instance_profile": self.instance_profile, "data_volume": self.data_volume,
        }


def ssh_source_cidr(value: str | None) -> str:
    """The caller's address as a /32 or /128 (only that: SSH is never opened wider)."""
    if not value:
        raise UserError(
            "cannot tell your public IP address for the SSH rule",
            hint="pass --ssh-cidr YOUR.PUBLIC.IP/32 (or an IPv6 /128) or set "
            "AMIBAKE_SSH_CIDR (SSH is only opened to one address)",
        )
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise UserError(f"--ssh-cidr {value!r} is not an address",
                        hint="e.g. --ssh-cidr 203.0.113.7/32 or 2001:db8::7/128") from exc
    if net.num_addresses != 1:
        raise UserError(f"--ssh-cidr {value} opens SSH to {net.num_addresses} addresses",
                        hint=f"give your own address only, as /{net.max_prefixlen}")
    return str(net)


Rule = tuple[int, str]  # (TCP port, source CIDR: IPv4 or IPv6)


def _permission(port: int, cidr: str, label: str) -> IpPermissionTypeDef:
    if ipaddress.ip_network(cidr).version == 6:
        return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                "Ipv6Ranges": [{"CidrIpv6": cidr, "Description": label}]}
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
            "IpRanges": [{"CidrIp": cidr, "Description": label}]}


def ingress_rules(permissions: Sequence[Any]) -> tuple[set[Rule], list[Any]]:
    """The group's (port, cidr) TCP rules, and every permission that is not one
    (other protocols, port ranges, group or prefix-list sources)."""
    rules: set[Rule] = set()
    foreign: list[Any] = []
    for perm in permissions:
        single = (perm.get("IpProtocol") == "tcp"
                  and perm.get("FromPort") == perm.get("ToPort") is not None)
        if not single or perm.get("UserIdGroupPairs") or perm.get("PrefixListIds"):
            foreign.append(perm)
            continue
        port = int(perm.get("FromPort", 0))
        rules.update((port, r["CidrIp"]) for r in perm.get("IpRanges", []))
        rules.update((port, r["CidrIpv6"]) for r in perm.get("Ipv6Ranges", []))
    return rules, foreign


def reconcile_ingress(ec2: EC2Client, group_id: str, desired: Sequence[Rule],
                      label: str) -> None:
    """Make the group's ingress exactly `desired`: revoke the rest, add what is missing."""
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    have, foreign = ingress_rules(group.get("IpPermissions", []))
    want = set(desired)
    stale = [_permission(port, cidr, label) for port, cidr in sorted(have - want)]
    for perm in [*foreign, *stale]:
        for key in ("Ipv6Ranges", "IpRanges"):  # revoke matches without descriptions
            for rng in perm.get(key, []):
                rng.pop("Description", None)
    if foreign or stale:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[*foreign, *stale])
    missing = [_permission(port, cidr, label) for port, cidr in sorted(want - have)]
    if missing:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)


def role_ports(manifest: Manifest, role: str) -> list[tuple[int, str]]:
    """(port, source CIDR) the role's services listen on."""
    spec = manifest.roles[role]
    comps = manifest.components
    ports: list[tuple[int, str]] = []
    if "nginx" in spec.components and comps.nginx is not None:
        ports.append((comps.nginx.listen, "0.0.0.0/0"))
    if "appserver" in spec.components and comps.appserver is not None:
        ports.extend((p, manifest.app.database.network) for p in comps.appserver.ports)
    if "postgresql" in spec.components and comps.postgresql is not None:
        ports.append((comps.postgresql.port, manifest.app.database.network))
    ports.extend((p, "0.0.0.0/0") for p in spec.ports)
    return list(dict.fromkeys(ports))


def resolve_image(clients: Clients, manifest: Manifest, version: str | None) -> str:
    """The AMI id of `version` (default: latest) from SSM in the home region."""
    leaf = version or "latest"
    name = f"{manifest.publish.ssm_prefix.rstrip('/')}/{manifest.name}/{leaf}"
    try:
        return str(clients.ssm().get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            raise UserError(f"no published image at SSM {name} in {clients.home_region}",
                            hint="publish it first: amibake publish MANIFEST") from exc
        raise


def _write_private_key(path: Path, material: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(material)
    os.chmod(path, 0o600)


def ensure_key_pair(ec2: EC2Client, key_name: str, key_dir: Path, public_key: bytes | None,
                    stack: ExitStack) -> str:
    """Import `public_key` or create a key pair; returns the private key file ('' if imported)."""
    try:
        ec2.describe_key_pairs(KeyNames=[key_name])
        exists = True
    except ClientError as exc:
        if error_code(exc) != "InvalidKeyPair.NotFound":
            raise
        exists = False
    key_file = key_dir / f"{key_name}.pem"
    if exists:
        if public_key is None and not key_file.exists():
            raise UserError(f"key pair {key_name} exists in AWS but {key_file} is missing",
                            hint="pass --public-key ~/.ssh/id_ed25519.pub or another --key-name")
        return "" if public_key is not None else str(key_file)
    if public_key is not None:
        ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=public_key)
        stack.callback(ec2.delete_key_pair, KeyName=key_name)
        return ""
    if key_file.exists():
        raise UserError(f"{key_file} exists but key pair {key_name} does not",
                        hint="remove the stale file or pass --key-name")
    created = ec2.create_key_pair(KeyName=key_name, KeyType="ed25519")
    stack.callback(ec2.delete_key_pair, KeyName=key_name)
    _write_private_key(key_file, created["KeyMaterial"])
    stack.callback(key_file.unlink, missing_ok=True)
    return str(key_file)


def ensure_security_group(ec2: EC2Client, name: str, description: str, rules: list[Rule],
                          tags: list[TagTypeDef], stack: ExitStack) -> str:
    """The role's group in the default VPC (created if missing), its ingress
    reconciled to exactly `rules`."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise UserError("this region has no default VPC",
                        hint="create one: aws ec2 create-default-vpc")
    vpc_id = vpcs[0]["VpcId"]
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )["SecurityGroups"]
    if groups:
        group_id = str(groups[0]["GroupId"])
    else:
        group_id = ec2.create_security_group(
            GroupName=name, Description=description, VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
        )["GroupId"]
        stack.callback(ec2.delete_security_group, GroupId=group_id)
    reconcile_ingress(ec2, group_id, rules, f"amibake {name}")
    return group_id


def _default_user_data(manifest: Manifest, role: str) -> bytes:
    from builder.render import render_role  # H2's renderer

    return bytes(render_role(manifest, role, baked=True).user_data)


def launch_aws(
    clients: Clients,
    manifest: Manifest,
    role: str,
    *,
    ssh_cidr: str | None = None,
    version: str | None = None,
    image_id: str | None = None,
    key_name: str | None = None,
    public_key: Path | None = None,
    key_dir: Path | None = None,
    instance_type: str | None = None,
    instance_profile: str | None = None,
    user_data: Callable[[Manifest, str], bytes] = _default_user_data,
    waiter: Waiter = RUNNING_WAITER,
    profile_waiter: Waiter = PROFILE_WAITER,
) -> LaunchResult:
    if role not in manifest.roles:
        raise UserError(f"no role {role!r} in {manifest.source}",
                        hint=f"roles: {', '.join(sorted(manifest.roles))}")
    cidr = ssh_source_cidr(ssh_cidr or os.environ.get("AMIBAKE_SSH_CIDR"))
    if instance_profile is not None:
        check_profile_name(instance_profile)
    key_material = read_public_key(public_key).encode() if public_key is not None else None
    spec = manifest.roles[role]
    ec2 = clients.ec2()
    ami = image_id or resolve_image(clients, manifest, version)
    key_name = key_name or f"amibake-{manifest.name}"
    key_dir = key_dir or Path.home() / ".ssh"
    tags: list[TagTypeDef] = [{"Key": "Role", "Value": role},
                              {"Key": "Name", "Value": f"{manifest.name}-{role}"},
                              {"Key": "amibake:name", "Value": manifest.name}]
    tags += [{"Key": k, "Value": v} for k, v in instance_tags(manifest, role).items()]
    body = user_data(manifest, role)
    with ExitStack() as stack:
        key_file = ensure_key_pair(ec2, key_name, key_dir, key_material, stack)
        rules = [(22, cidr), *role_ports(manifest, role)]
        group_id = ensure_security_group(
            ec2, f"amibake-{manifest.name}-{role}",
            f"amibake {manifest.name} {role}: SSH from {cidr} and service ports",
            rules, tags, stack)
        request: dict[str, Any] = {
            "ImageId": ami,
            "InstanceType": instance_type or spec.instance_type,
            "MinCount": 1, "MaxCount": 1,
            "KeyName": key_name,
            "SecurityGroupIds": [group_id],
            "UserData": body,  # boto3 base64-encodes it
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                                "HttpEndpoint": "enabled", "InstanceMetadataTags": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        pg = manifest.components.postgresql
        ebs = role in ebs_roles(manifest)
        if "postgresql" in spec.components and pg is not None and not ebs:
            request["BlockDeviceMappings"] = [
                {"DeviceName": "/dev/sdb", "VirtualName": pg.instance_store}
            ]
        volume = find_volume(ec2, manifest, role) if ebs else None
        if volume is not None:  # a volume is attached in its own zone only
            request["Placement"] = {"AvailabilityZone": volume["AvailabilityZone"]}
        made = None
        if instance_profile is None:
            made = ensure_instance_profile(clients, manifest, role, stack)
            instance_profile = made[0] if made else ""
        if instance_profile:
            request["IamInstanceProfile"] = {"Name": instance_profile}
        # removed after the instance is terminated (an ExitStack unwinds last-in first)
        after_instance = stack.enter_context(ExitStack())
        launched = _run(ec2, request, profile_waiter if made and made[1] else None)
        instance_id = launched["InstanceId"]
        stack.callback(_terminate, ec2, instance_id)
        volume_id = volume["VolumeId"] if volume is not None else ""
        if ebs and volume is None:
            volume_id = create_volume(ec2, manifest, role,
                                      launched["Placement"]["AvailabilityZone"])
            after_instance.callback(delete_volume, ec2, volume_id)
        instance = _wait_running(ec2, instance_id, waiter)
        stack.pop_all()
    ip = str(instance.get("PublicIpAddress") or instance.get("PrivateIpAddress") or "")
    login = manifest.image.login_user
    key_opt = f"-i {key_file} " if key_file else ""
    return LaunchResult(
        instance_id=instance_id, image_id=ami, role=role, region=clients.home_region,
        public_ip=ip, key_name=key_name, key_file=key_file, security_group_id=group_id,
        ssh_command=f"ssh {key_opt}{login}@{ip}",
        hosts_line=f"{ip} {manifest.app.server_name}",
        instance_profile=instance_profile, data_volume=volume_id,
    )


def _run(ec2: EC2Client, request: dict[str, Any], new_profile: Waiter | None
         ) -> InstanceTypeDef:
    """run_instances; with a profile made moments ago, retried while EC2 does not know it
    yet (IAM is eventually consistent)."""
    def run() -> InstanceTypeDef:
        try:
            return ec2.run_instances(**request)["Instances"][0]
        except ClientError as exc:
            if new_profile is not None and error_code(exc) == "InvalidParameterValue" \
                    and "iamInstanceProfile" in str(exc):
                raise NotYet(str(exc)) from exc
            raise

    return run() if new_profile is None else wait_for(run, new_profile)


def _terminate(ec2: EC2Client, instance_id: str) -> None:
    """Terminate and wait, so the security group can be deleted after it."""
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_terminated").wait(
        InstanceIds=[instance_id], WaiterConfig={"Delay": 5, "MaxAttempts": 60})


def _wait_running(ec2: EC2Client, instance_id: str, waiter: Waiter) -> InstanceTypeDef:
    def check() -> InstanceTypeDef:
        res = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        inst = res[0]["Instances"][0]
        state = inst["State"]["Name"]
        if state == "running":
            return inst
        if state in ("terminated", "shutting-down", "stopped"):
            raise UserError(f"instance {instance_id} is {state}",
                            hint=inst.get("StateReason", {}).get("Message", ""))
        raise NotYet(f"{instance_id} is {state}")

    return wait_for(check, waiter)
