"""Secret references resolved on the operator's machine (the cutover, `amibake db`).

For a local run the environment variable `AMIBAKE_SECRET_<NAME>` overrides
the store, where <NAME> is the secret's name upper-cased with every run of
non-alphanumerics turned into `_` (`/smallpayroll/db-password` →
`AMIBAKE_SECRET_SMALLPAYROLL_DB_PASSWORD`). On instances, secrets are
resolved by cloudinit/boot/amibake-secret instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from builder.errors import UserError
from builder.manifest.model import SecretRef


def secret_env_name(ref: SecretRef) -> str:
    """The environment variable that overrides `ref` for local runs."""
    return "AMIBAKE_SECRET_" + re.sub(r"[^A-Za-z0-9]+", "_", ref.name).strip("_").upper()


def resolve_secret(
    ref: SecretRef,
    *,
    ssm: Any = None,
    secretsmanager: Any = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The secret's value: env override first, then the store's client (passed in)."""
    env = os.environ if environ is None else environ
    name = secret_env_name(ref)
    if name in env:
        return env[name]
    if ref.store == "ssm" and ssm is not None:
        try:
            resp = ssm.get_parameter(Name=ref.name, WithDecryption=True)
        except Exception as exc:  # botocore ClientError and friends
            raise UserError(
                f"cannot read SSM parameter {ref.name}: {exc}",
                hint=f"check the name and your credentials, or set {name} for a local run",
            ) from exc
        return str(resp["Parameter"]["Value"])
    if ref.store == "secretsmanager" and secretsmanager is not None:
        try:
            resp = secretsmanager.get_secret_value(SecretId=ref.name)
        except Exception as exc:
            raise UserError(
                f"cannot read secret {ref.name}: {exc}",
                hint=f"check the name and your credentials, or set {name} for a local run",
            ) from exc
        return str(resp["SecretString"])
    raise UserError(
        f"secret {ref.store}:{ref.name} is not available",
        hint=f"set {name} for a local run, or run with AWS credentials",
    )
