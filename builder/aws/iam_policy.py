"""The least-privilege IAM policy for amibake's AWS commands.

Each set lists exactly the API operations the code calls (tests record the
calls through botocore events and compare). `IMPLIED` adds the few actions
AWS checks without a call of their own (tag-on-create), each with its reason.
"""

from __future__ import annotations

from typing import Any

#: publish and amis deprecate/prune/gc (builder/publish)
PUBLISH_ACTIONS: frozenset[str] = frozenset({
    "sts:GetCallerIdentity",
    "ec2:DescribeRegions",
    "ec2:DescribeImages",
    "ec2:DescribeSnapshots",
    "ec2:RegisterImage",
    "ec2:CopyImage",
    "ec2:CreateTags",
    "ec2:DeregisterImage",
    "ec2:DeleteSnapshot",
    "ec2:EnableImageDeprecation",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ebs:StartSnapshot",
    "ebs:PutSnapshotBlock",
    "ebs:ListSnapshotBlocks",
    "ebs:CompleteSnapshot",
    "ssm:GetParameter",
    "ssm:PutParameter",
    "ssm:AddTagsToResource",
    "ssm:DeleteParameter",
})

#: launch --target aws (builder/aws/launch.py)
LAUNCH_ACTIONS: frozenset[str] = frozenset({
    "ssm:GetParameter",
    "ec2:DescribeKeyPairs",
    "ec2:CreateKeyPair",
    "ec2:ImportKeyPair",
    "ec2:DeleteKeyPair",
    "ec2:DescribeVpcs",
    "ec2:DescribeSecurityGroups",
    "ec2:CreateSecurityGroup",
    "ec2:DeleteSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:RunInstances",
    "ec2:DescribeInstances",
    "ec2:TerminateInstances",
    # the instance profile (builder/aws/instance_profile.py)
    "sts:GetCallerIdentity",
    "iam:GetRole",
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:GetInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    # storage: ebs (builder/aws/data_volume.py)
    "ec2:DescribeVolumes",
    "ec2:CreateVolume",
    "ec2:DeleteVolume",
})

#: stack deploy's instance refresh of a group on an older launch template version
#: (builder/stack/refresh.py)
STACK_ROLL_ACTIONS: frozenset[str] = frozenset({
    "autoscaling:UpdateAutoScalingGroup",
    "autoscaling:StartInstanceRefresh",
    "autoscaling:DescribeInstanceRefreshes",
    "ec2:ModifyLaunchTemplate",
})

#: stack plan|deploy|status|delete (builder/stack/changeset.py, deploy.py, refresh.py)
STACK_ACTIONS: frozenset[str] = frozenset({
    "cloudformation:DescribeStacks",
    "cloudformation:DescribeStackEvents",
    "cloudformation:CreateChangeSet",
    "cloudformation:DescribeChangeSet",
    "cloudformation:ExecuteChangeSet",
    "cloudformation:DeleteChangeSet",
    "cloudformation:DeleteStack",
    "cloudformation:ListStackResources",
    "autoscaling:DescribeAutoScalingGroups",
    "ec2:DescribeLaunchTemplates",
}) | STACK_ROLL_ACTIONS

#: actions AWS authorizes without a call of their own
IMPLIED: dict[str, dict[str, str]] = {
    "launch": {
        "ec2:CreateTags": "RunInstances, CreateSecurityGroup and CreateVolume tag on create",
        "iam:PassRole": "RunInstances with an instance profile passes its role to EC2",
        "iam:TagRole": "CreateRole tags on create",
        "iam:TagInstanceProfile": "CreateInstanceProfile tags on create",
    },
    "stack": {
        "ssm:GetParameters": "CloudFormation resolves the launch templates' "
                             "{{resolve:ssm:...}} image with the caller's permissions",
    },
}

#: EBS encryption with a customer KMS key (publish.kms_key_ids): AWS calls KMS
#: on amibake's behalf, so these never show up as calls of ours.
KMS_ACTIONS: tuple[str, ...] = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
)

SERVICE_PREFIX = {"ec2": "ec2", "ebs": "ebs", "ssm": "ssm", "sts": "sts", "iam": "iam"}


def action_name(service: str, operation: str) -> str:
    """IAM action of a botocore operation (service name as in `client.meta`)."""
    return f"{SERVICE_PREFIX.get(service, service)}:{operation}"


def policy_document(*, publish: bool = True, launch: bool = True, stack: bool = False,
                    kms: bool = False) -> dict[str, Any]:
    """The policy; `kms` adds the KMS permissions EBS encryption needs.

    `stack` covers amibake's own calls; CloudFormation then creates the template's
    resources (VPC, instances, load balancers, IAM roles...) with the caller's
    permissions, or with a service role's given to CloudFormation."""
    statements: list[dict[str, Any]] = []
    for sid, wanted, base in (("AmibakePublish", publish, PUBLISH_ACTIONS),
                              ("AmibakeLaunch", launch, LAUNCH_ACTIONS | set(IMPLIED["launch"])),
                              ("AmibakeStack", stack, STACK_ACTIONS | set(IMPLIED["stack"]))):
        if wanted:
            statements.append({"Sid": sid, "Effect": "Allow", "Action": sorted(base),
                               "Resource": "*"})
    if kms:
        statements.append({"Sid": "AmibakeEbsEncryption", "Effect": "Allow",
                           "Action": list(KMS_ACTIONS), "Resource": "*"})
        statements.append({"Sid": "AmibakeEbsEncryptionGrants", "Effect": "Allow",
                           "Action": ["kms:CreateGrant"], "Resource": "*",
                           "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}})
    return {"Version": "2012-10-17", "Statement": statements}
