"""The instance profile `launch --target aws` attaches: `amibake-<name>-<role>`.

Made if missing (an IAM role that EC2 may assume, with the role's policy from
builder/aws/instance_policy.py inline, and an instance profile holding it),
reused if present (its inline policy is set to the current one). What this
run created is removed again when the launch fails later.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from typing import Any

from botocore.exceptions import ClientError

from builder.aws.clients import Clients, error_code
from builder.aws.instance_policy import POLICY_NAME, LiteralArns, role_policy_document
from builder.errors import UserError
from builder.manifest.model import Manifest

#: IAM role / instance profile names
IAM_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,64}", re.ASCII)
TRUST_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


def profile_name(m: Manifest, role: str) -> str:
    name = f"amibake-{m.name}-{role}"
    if not IAM_NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a usable IAM name (at most 64 of A-Z a-z 0-9 +=,.@_-)",
                        hint="pass --instance-profile NAME of an existing profile")
    return name


def check_profile_name(name: str) -> str:
    if not IAM_NAME.fullmatch(name):
        raise UserError(f"--instance-profile {name!r} is not an instance profile name",
                        hint="at most 64 of A-Z a-z 0-9 +=,.@_-")
    return name


def _missing(exc: ClientError) -> bool:
    return error_code(exc) == "NoSuchEntity"


def ensure_instance_profile(clients: Clients, m: Manifest, role: str,
                            stack: ExitStack) -> tuple[str, bool] | None:
    """(profile name, created now) of the role's profile; None when the role needs no
    permission at all (nothing is made)."""
    account = str(clients.sts().get_caller_identity()["Account"])
    document = role_policy_document(m, role, LiteralArns(clients.home_region, account))
    if document is None:
        return None
    iam: Any = clients.client("iam")
    name = profile_name(m, role)
    tags = [{"Key": "amibake:name", "Value": m.name}, {"Key": "Role", "Value": role}]
    created = False
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        if not _missing(exc):
            raise
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                        Description=f"amibake {m.name}: instances in role {role}", Tags=tags)
        stack.callback(iam.delete_role, RoleName=name)
        created = True
    iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME,
                        PolicyDocument=json.dumps(document, sort_keys=True))
    if created:
        stack.callback(iam.delete_role_policy, RoleName=name, PolicyName=POLICY_NAME)
    try:
        holds = [r["RoleName"] for r in
                 iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]]
    except ClientError as exc:
        if not _missing(exc):
            raise
        iam.create_instance_profile(InstanceProfileName=name, Tags=tags)
        stack.callback(iam.delete_instance_profile, InstanceProfileName=name)
        holds, created = [], True
    if holds and name not in holds:
        raise UserError(f"instance profile {name} holds role {holds[0]}, not {name}",
                        hint="remove that role from it, or pass --instance-profile NAME")
    if not holds:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        stack.callback(iam.remove_role_from_instance_profile, InstanceProfileName=name,
                       RoleName=name)
        created = True
    return name, created
