"""The least privilege of an instance in a role: its instance profile's policy.

One home for three users: `amibake iam-policy --role`, `launch --target aws`
(the role it creates) and the stack template (its instance roles). What a
role may do, and nothing else:

- read the secrets its setup reads (the actions the on-instance secret tool
  calls, the same table the local metadata emulator answers,
  builder/imds/secrets_api.py), each on the referenced secret only;
- the db role with `backup`: its repository's key prefix and nothing else of
  the bucket (ListBucket only with an `s3:prefix` under it, Get/Put/Delete
  on `prefix/*`, GetBucketLocation), and with `kms_key_id` Decrypt and
  GenerateDataKey on that key;
- the db role with `storage: ebs`: DescribeVolumes (EC2 has no resource
  level for Describe*) and AttachVolume only of a volume tagged with its
  stack and role, onto an instance tagged with its stack.

ARNs are written by an `Arns`: literal strings for IAM (`LiteralArns`), or
`Fn::Sub` expressions for CloudFormation (`CloudFormationArns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from builder.aws.iam_policy import action_name
from builder.db_storage.volume import ROLE_TAG, STACK_TAG, ebs_roles, volume_tags
from builder.imds.secrets_api import TARGETS
from builder.manifest.model import Manifest, SecretRef

#: secret store → the IAM action the instance's secret tool needs
READ_ACTION: dict[str, str] = {
    store: action_name(store, target.partition(".")[2]) for target, store in TARGETS.items()
}
#: what pgBackRest does to its repository's objects (backup, archive-push/get, expire)
BACKUP_OBJECT_ACTIONS = ("s3:DeleteObject", "s3:GetObject", "s3:PutObject")
#: SSE-KMS: reading an object decrypts, writing one makes a data key
BACKUP_KMS_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")
#: the boot step that attaches the db role's volume (cloudinit/boot/amibake-ebs-attach)
EBS_ATTACH_ACTIONS = ("ec2:AttachVolume", "ec2:DescribeVolumes")
#: the inline policy's name on every instance role amibake makes (launch and stack)
POLICY_NAME = "amibake-instance"
HERE = "."  # region/account of the stack or launch (as opposed to a fixed one)


class Arns(Protocol):
    def arn(self, service: str, resource: str, *, region: str = HERE,
            account: str = HERE) -> Any:
        """`arn:<partition>:<service>:<region>:<account>:<resource>`; HERE means the
        region/account the instance runs in, '' leaves the field empty (S3)."""

    def given(self, arn: str) -> Any:
        """A full ARN written by the manifest's author, as it is."""


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


@dataclass(frozen=True)
class LiteralArns:
    """ARNs for an IAM policy document: the launch's region and account ('*': any)."""

    region: str = "*"
    account: str = "*"

    def arn(self, service: str, resource: str, *, region: str = HERE,
            account: str = HERE) -> str:
        where = self.region if region == HERE else region
        who = self.account if account == HERE else account
        return f"arn:{partition_of(self.region)}:{service}:{where}:{who}:{resource}"

    def given(self, arn: str) -> str:
        return arn


class CloudFormationArns:
    """ARNs as `Fn::Sub` of the stack's partition, region and account."""

    def arn(self, service: str, resource: str, *, region: str = HERE,
            account: str = HERE) -> dict[str, str]:
        def fixed(value: str) -> str:
            return value.replace("${", "${!")

        where = "${AWS::Region}" if region == HERE else fixed(region)
        who = "${AWS::AccountId}" if account == HERE else fixed(account)
        return {"Fn::Sub": f"arn:${{AWS::Partition}}:{service}:{where}:{who}:{fixed(resource)}"}

    def given(self, arn: str) -> dict[str, str]:
        return {"Fn::Sub": arn.replace("${", "${!")}


# ------------------------------------------------------------------ secrets

def role_secrets(m: Manifest, role: str) -> tuple[SecretRef, ...]:
    """The secrets an instance in `role` reads at boot: the app's database password for the
    app servers' environment and for the database server's app role; the backup
    repository's passphrase on the database server."""
    components = m.roles[role].components
    refs: list[SecretRef] = []
    if "appserver" in components or "postgresql" in components:
        refs.append(m.app.database.password)
    pg = m.components.postgresql
    if "postgresql" in components and pg is not None and pg.backup is not None \
            and pg.backup.repository.cipher_passphrase is not None:
        refs.append(pg.backup.repository.cipher_passphrase)
    return tuple(dict.fromkeys(refs))


def secret_arn(ref: SecretRef, arns: Arns) -> Any:
    """The ARN of a referenced secret in the instance's region and account.

    An SSM path's leading / is part of `parameter/`; a Secrets Manager name is
    followed by the 6-character suffix AWS adds (`-??????`). A full ARN given
    as the reference is used as it is.
    """
    if ref.name.startswith("arn:"):
        return arns.given(ref.name)
    if ref.store == "ssm":
        return arns.arn("ssm", f"parameter/{ref.name.lstrip('/')}")
    return arns.arn("secretsmanager", f"secret:{ref.name}-??????")


def secret_statements(m: Manifest, role: str, arns: Arns) -> list[dict[str, Any]]:
    by_store: dict[str, list[Any]] = {}
    for ref in role_secrets(m, role):
        by_store.setdefault(ref.store, []).append(secret_arn(ref, arns))
    return [{"Sid": f"Read{store.title().replace('manager', 'Manager')}Secrets",
             "Effect": "Allow", "Action": [READ_ACTION[store]], "Resource": resources}
            for store, resources in sorted(by_store.items())]


# ------------------------------------------------------------------ backup repository

def backup_prefix(m: Manifest) -> str:
    """The repository's key prefix (pgBackRest's repo1-path without its leading /)."""
    from builder.db.config import repo_path

    pg = m.components.postgresql
    assert pg is not None and pg.backup is not None
    return repo_path(m, pg.backup).lstrip("/")


def kms_key_arn(key: str, region: str, arns: Arns) -> tuple[Any, dict[str, Any]]:
    """(resource, condition) of a KMS key given as an id, an alias or an ARN: an alias
    names no key, so the statement allows any key that has that alias."""
    if key.startswith("arn:"):
        if ":alias/" in key:
            return arns.arn("kms", "key/*", region=region), {
                "ForAnyValue:StringEquals": {"kms:ResourceAliases": key.split(":", 5)[5]}}
        return arns.given(key), {}
    if key.startswith("alias/"):
        return arns.arn("kms", "key/*", region=region), {
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": key}}
    return arns.arn("kms", f"key/{key}", region=region), {}


def backup_statements(m: Manifest, role: str, arns: Arns) -> list[dict[str, Any]]:
    pg = m.components.postgresql
    if pg is None or pg.backup is None or "postgresql" not in m.roles[role].components:
        return []
    repo = pg.backup.repository
    bucket = arns.arn("s3", repo.bucket, region="", account="")
    prefix = backup_prefix(m)
    statements: list[dict[str, Any]] = [
        {"Sid": "BackupListPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"],
         "Resource": [bucket],
         "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}},
        {"Sid": "BackupObjects", "Effect": "Allow", "Action": list(BACKUP_OBJECT_ACTIONS),
         "Resource": [arns.arn("s3", f"{repo.bucket}/{prefix}/*", region="", account="")]},
        {"Sid": "BackupBucketLocation", "Effect": "Allow", "Action": ["s3:GetBucketLocation"],
         "Resource": [bucket]},
    ]
    if repo.kms_key_id:
        resource, condition = kms_key_arn(repo.kms_key_id, repo.region, arns)
        statement: dict[str, Any] = {"Sid": "BackupKmsKey", "Effect": "Allow",
                                     "Action": list(BACKUP_KMS_ACTIONS), "Resource": [resource]}
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return statements


# ------------------------------------------------------------------ EBS data volume

def ebs_statements(m: Manifest, role: str, arns: Arns) -> list[dict[str, Any]]:
    if role not in ebs_roles(m):
        return []
    tags = volume_tags(m, role)
    volume = {f"aws:ResourceTag/{key}": value for key, value in tags.items()}
    instance = {f"aws:ResourceTag/{STACK_TAG}": tags[STACK_TAG],
                f"aws:ResourceTag/{ROLE_TAG}": role}
    return [
        {"Sid": "DataVolumeFind", "Effect": "Allow", "Action": ["ec2:DescribeVolumes"],
         "Resource": "*"},
        {"Sid": "DataVolumeAttach", "Effect": "Allow", "Action": ["ec2:AttachVolume"],
         "Resource": [arns.arn("ec2", "volume/*")], "Condition": {"StringEquals": volume}},
        {"Sid": "DataVolumeAttachToInstance", "Effect": "Allow", "Action": ["ec2:AttachVolume"],
         "Resource": [arns.arn("ec2", "instance/*")], "Condition": {"StringEquals": instance}},
    ]


def instance_tags(m: Manifest, role: str) -> dict[str, str]:
    """Tags an instance in `role` carries so that its policy lets it attach its volume."""
    return volume_tags(m, role) if role in ebs_roles(m) else {}


def policy_statements(m: Manifest, role: str, arns: Arns) -> list[dict[str, Any]]:
    """Every statement of the role's instance policy; [] when it needs nothing."""
    return [*secret_statements(m, role, arns), *backup_statements(m, role, arns),
            *ebs_statements(m, role, arns)]


def role_policy_document(m: Manifest, role: str, arns: Arns) -> dict[str, Any] | None:
    """The instance profile's policy document, None when the role needs no permission."""
    statements = policy_statements(m, role, arns)
    if not statements:
        return None
    return {"Version": "2012-10-17", "Statement": statements}
