"""The least privilege of an instance in a role: read the secrets its setup reads.

The actions are the ones the on-instance secret tool calls (the same table
the local metadata emulator answers, builder/imds/secrets_api.py), named as
builder/aws/iam_policy.py names them; the resources are the manifest's
secret references, nothing else.
"""

from __future__ import annotations

from typing import Any

from builder.aws.iam_policy import action_name
from builder.imds.secrets_api import TARGETS
from builder.manifest.model import Manifest, SecretRef

#: secret store → the IAM action the instance's secret tool needs
READ_ACTION: dict[str, str] = {
    store: action_name(store, target.partition(".")[2]) for target, store in TARGETS.items()
}


def role_secrets(m: Manifest, role: str) -> tuple[SecretRef, ...]:
    """The secrets an instance in `role` reads at boot: the app's database password for the
    app servers' environment and for the database server's app role."""
    components = m.roles[role].components
    if "appserver" in components or "postgresql" in components:
        return (m.app.database.password,)
    return ()


def secret_arn(ref: SecretRef) -> dict[str, Any]:
    """The ARN of a referenced secret in the stack's region and account (Fn::Sub).

    An SSM path's leading / is part of `parameter/`; a Secrets Manager name is
    followed by the 6-character suffix AWS adds (`-??????`). A full ARN given
    as the reference is used as it is.
    """
    if ref.name.startswith("arn:"):
        return {"Fn::Sub": ref.name.replace("${", "${!")}
    if ref.store == "ssm":
        return {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:"
                           f"parameter/{ref.name.lstrip('/')}"}
    return {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:"
                       f"${{AWS::AccountId}}:secret:{ref.name}-??????"}


def policy_statements(m: Manifest, role: str) -> list[dict[str, Any]]:
    """One statement per secret store the role reads from; [] when it reads none."""
    by_store: dict[str, list[dict[str, Any]]] = {}
    for ref in role_secrets(m, role):
        by_store.setdefault(ref.store, []).append(secret_arn(ref))
    return [{"Sid": f"Read{store.title().replace('manager', 'Manager')}Secrets",
             "Effect": "Allow", "Action": [READ_ACTION[store]], "Resource": resources}
            for store, resources in sorted(by_store.items())]
