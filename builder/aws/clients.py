"""AWS sessions and clients: the standard credential chain, profile, region,
`--endpoint-url` for emulators. Clients are made here and passed in.

With no credentials configured anywhere in the chain, `clients_from_args`
returns None and the caller keeps the image in the local store only, saying
so: amibake never falls back to some default account.
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from builder.aws.retry import Retries
from builder.errors import UserError

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_sts import STSClient

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS calls go: a profile, a home region, an optional endpoint."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


class Clients:
    """Creates (and caches) boto3 clients of one session, per service and region.

    `max_pool_connections` bounds HTTP connections per client. Every client
    has botocore's own retries off and `retries` (the one retry policy,
    builder/aws/retry.py) installed instead.
    """

    def __init__(
        self,
        session: boto3.Session,
        *,
        home_region: str | None = None,
        endpoint_url: str | None = None,
        max_pool_connections: int = 16,
        retries: Retries | None = None,
    ) -> None:
        self.session = session
        self.retries = retries or Retries()
        self.home_region = home_region or session.region_name or DEFAULT_REGION
        self.endpoint_url = endpoint_url
        self.max_pool_connections = max_pool_connections
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str | None = None) -> Any:
        region = region or self.home_region
        key = (service, region)
        with self._lock:
            if key not in self._cache:
                from botocore.config import Config

                config = Config(
                    retries={"mode": "standard", "total_max_attempts": 1},
                    max_pool_connections=self.max_pool_connections,
                )
                made = self.session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.endpoint_url,
                    config=config,
                )
                self.retries.install(made)
                self._cache[key] = made
            return self._cache[key]

    def ec2(self, region: str | None = None) -> EC2Client:
        return self.client("ec2", region)  # type: ignore[no-any-return]

    def ebs(self, region: str | None = None) -> EBSClient:
        return self.client("ebs", region)  # type: ignore[no-any-return]

    def s3(self, region: str | None = None) -> S3Client:
        return self.client("s3", region)  # type: ignore[no-any-return]

    def ssm(self, region: str | None = None) -> SSMClient:
        return self.client("ssm", region)  # type: ignore[no-any-return]

    def sts(self) -> STSClient:
        return self.client("sts")  # type: ignore[no-any-return]


def add_aws_options(parser: argparse.ArgumentParser) -> None:
    """--profile, --region, --endpoint-url (shared by every AWS verb)."""
    group = parser.add_argument_group("AWS")
    group.add_argument("--profile", help="AWS profile from the shared config files")
    group.add_argument("--region", help="home region (default: manifest's first region)")
    group.add_argument(
        "--endpoint-url", help="send every AWS call here (an emulator, e.g. moto server)"
    )


def target_from_args(args: argparse.Namespace, default_region: str | None = None) -> AwsTarget:
    return AwsTarget(
        profile=getattr(args, "profile", None),
        region=getattr(args, "region", None) or default_region,
        endpoint_url=getattr(args, "endpoint_url", None),
    )


def make_session(target: AwsTarget) -> boto3.Session:
    # boto3 is imported on first use: `validate`, `render` and --help never need it.
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.Session(profile_name=target.profile, region_name=target.region)
    except ProfileNotFound as exc:
        raise UserError(
            f"AWS profile {target.profile!r} not found",
            hint="list profiles with `aws configure list-profiles`, or drop --profile",
        ) from exc


def has_credentials(session: boto3.Session) -> bool:
    """True when the standard chain finds credentials (env, files, SSO, IMDS...)."""
    from botocore.exceptions import BotoCoreError

    try:
        return session.get_credentials() is not None
    except BotoCoreError:
        return False


def make_clients(target: AwsTarget, *, max_pool_connections: int = 16,
                 retries: Retries | None = None) -> Clients | None:
    """Clients for `target`, or None when no credentials are configured."""
    session = make_session(target)
    if not has_credentials(session):
        return None
    return Clients(
        session,
        home_region=target.region,
        endpoint_url=target.endpoint_url,
        max_pool_connections=max_pool_connections,
        retries=retries,
    )


NO_CREDENTIALS = (
    "no AWS credentials configured: nothing was sent to AWS, the image stays in the "
    "local store only"
)
NO_CREDENTIALS_HINT = (
    "configure credentials (AWS_PROFILE, ~/.aws/credentials, environment variables) "
    "or pass --profile"
)


def check_credentials(clients: Clients) -> dict[str, str]:
    """Who we are (sts:GetCallerIdentity); a clear error when credentials fail."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ident = clients.sts().get_caller_identity()
    except ClientError as exc:
        raise UserError(
            f"AWS credentials were refused: {exc.response['Error'].get('Message', exc)}",
            hint=NO_CREDENTIALS_HINT,
        ) from exc
    except BotoCoreError as exc:
        raise UserError(f"cannot reach AWS: {exc}",
                        hint="check --endpoint-url and the network") from exc
    return {"account": str(ident.get("Account", "")), "arn": str(ident.get("Arn", ""))}


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError ('' for anything else)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""
