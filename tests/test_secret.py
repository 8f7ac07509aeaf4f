"""amibake-secret: SigV4-signed SSM / Secrets Manager reads with the role's creds.

Against the IMDS emulator's own secrets API (which recomputes and checks
the signature with the fake credentials it hands out), and against moto's
server with IAM authentication switched on, so moto checks the signature,
the session token and the role's policy: the real protocol.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from builder.imds import Credentials, ImdsConfig, ImdsServer, secrets_api
from builder.ports import free_port
from tests.shipped_boot import shipped

ROOT = Path(__file__).resolve().parent.parent
SECRET = shipped("amibake-secret")  # amibake_imds.py inlined, as instances get it
PASSWORD = "s3cr3t-Passw0rd!"
SECRETS = {
    "db_password": {"store": "ssm", "name": "/smallpayroll/db-password"},
    "db_url": {"store": "secretsmanager", "name": "smallpayroll/db"},
}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/amibake").mkdir(parents=True)
    (root / "etc/amibake/roles.json").write_text(json.dumps({
        "version": 1, "login_user": "admin", "roles": {}, "all_services": [],
        "secrets": SECRETS,
    }))
    return root


def run_secret(root: Path, imds_url: str, name: str, *extra: str, timeout_s: float = 10,
               ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMIBAKE_", "AWS_", "PYTHON", "JOURNAL_STREAM"))}
    env.update({"AMIBAKE_IMDS_URL": imds_url, "AMIBAKE_ROOT": str(root),
                "AMIBAKE_SECRET_TIMEOUT": str(timeout_s)})
    return subprocess.run([str(SECRET), name, *extra], env=env, capture_output=True,
                          text=True, timeout=120)


def endpoint_user_data(url: str) -> bytes:
    return f"#cloud-config\n# amibake-role: app\n# amibake-secrets-endpoint: {url}\n".encode()


def local_config(**changes: object) -> ImdsConfig:
    config = ImdsConfig(region="eu-west-1", secrets={
        "/smallpayroll/db-password": PASSWORD,
        "smallpayroll/db": "postgres://payroll@db/payroll_prod"})
    return replace(config, **changes)  # type: ignore[arg-type]


# ------------------------------------------------ the emulator's secrets API


@pytest.mark.parametrize(("name", "value"), [
    ("db_password", PASSWORD), ("db_url", "postgres://payroll@db/payroll_prod")])
def test_secret_from_the_emulator(fake_root: Path, name: str, value: str) -> None:
    with ImdsServer(local_config()) as imds:
        imds.update(user_data=endpoint_user_data(imds.url))
        proc = run_secret(fake_root, imds.url, name)
        posts = [r for r in imds.requests if r.method == "POST"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == value  # printed as is, no newline added
    assert [r.status for r in posts] == [200]


def test_wrong_secret_key_is_refused_by_the_signature_check(fake_root: Path) -> None:
    # IMDS A hands out a secret key that the secrets API on B does not accept.
    with ImdsServer(local_config()) as api:
        other = Credentials(secret_access_key="not-the-right-secret-key")
        with ImdsServer(local_config(credentials=other,
                                     user_data=endpoint_user_data(api.url))) as imds:
            proc = run_secret(fake_root, imds.url, "db_password")
    assert proc.returncode == 1
    assert "HTTP 403 InvalidSignatureException: The request signature we calculated " \
        "does not match" in proc.stderr


def test_unknown_access_key_is_refused(fake_root: Path) -> None:
    with ImdsServer(local_config()) as api:
        other = Credentials(access_key_id="ASIAOTHERKEY00000000")
        with ImdsServer(local_config(credentials=other,
                                     user_data=endpoint_user_data(api.url))) as imds:
            proc = run_secret(fake_root, imds.url, "db_password")
    assert proc.returncode == 1
    assert "UnrecognizedClientException" in proc.stderr


def test_missing_parameter_is_reported(fake_root: Path) -> None:
    with ImdsServer(local_config(secrets={})) as imds:
        imds.update(user_data=endpoint_user_data(imds.url))
        proc = run_secret(fake_root, imds.url, "db_password")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert ("amibake-secret: error: ssm GetParameter: HTTP 400 ParameterNotFound: "
            "Parameter /smallpayroll/db-password not found.") in proc.stderr


def test_name_not_in_roles_json(fake_root: Path) -> None:
    with ImdsServer(local_config()) as imds:
        proc = run_secret(fake_root, imds.url, "api_key")
    assert proc.returncode == 1
    assert "no secret 'api_key'" in proc.stderr and "db_password, db_url" in proc.stderr


def test_instance_without_a_role(fake_root: Path) -> None:
    with ImdsServer(local_config(iam_role="")) as imds:
        proc = run_secret(fake_root, imds.url, "db_password")
    assert proc.returncode == 1
    assert "this instance has no IAM role" in proc.stderr


def test_endpoint_flag_overrides_user_data(fake_root: Path) -> None:
    with ImdsServer(local_config()) as api, ImdsServer(local_config(
            user_data=endpoint_user_data("http://127.0.0.1:9"))) as imds:
        proc = run_secret(fake_root, imds.url, "db_password", "--endpoint", api.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PASSWORD


def test_boto3_is_accepted_by_the_emulators_signature_check() -> None:
    config = local_config()
    creds = config.credentials
    with ImdsServer(config) as imds:
        kwargs = {"endpoint_url": imds.url, "region_name": config.region,
                  "aws_access_key_id": creds.access_key_id,
                  "aws_secret_access_key": creds.secret_access_key,
                  "aws_session_token": creds.token}
        ssm = boto3.client("ssm", **kwargs)  # type: ignore[call-overload]
        got = ssm.get_parameter(Name="/smallpayroll/db-password", WithDecryption=True)
        assert got["Parameter"]["Value"] == PASSWORD
        assert got["Parameter"]["Type"] == "SecureString"
        encrypted = ssm.get_parameter(Name="/smallpayroll/db-password")["Parameter"]["Value"]
        assert PASSWORD not in encrypted
        sm = boto3.client("secretsmanager", **kwargs)  # type: ignore[call-overload]
        assert sm.get_secret_value(SecretId="smallpayroll/db")["SecretString"] == \
            "postgres://payroll@db/payroll_prod"
        bad = boto3.client("ssm", **{**kwargs, "aws_secret_access_key": "wrong"})  # type: ignore[call-overload]
        with pytest.raises(bad.exceptions.ClientError) as err:
            bad.get_parameter(Name="/smallpayroll/db-password", WithDecryption=True)
        assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def _signed(config: ImdsConfig, body: bytes) -> tuple[dict[str, str], dt.datetime]:
    """Headers botocore's own signer puts on an SSM call, as a server receives them."""
    creds = config.credentials
    request = AWSRequest(method="POST", url="http://127.0.0.1:1234/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AmazonSSM.GetParameter"})
    SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.token),
              "ssm", config.region).add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = "127.0.0.1:1234"  # what the HTTP client sends
    when = dt.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return headers, when


def test_signature_check_unit() -> None:
    config = local_config()
    body = b'{"Name": "/smallpayroll/db-password", "WithDecryption": true}'
    headers, now = _signed(config, body)
    assert "host" in headers["authorization"] and "x-amz-security-token" in headers[
        "authorization"]
    check = secrets_api.check_signature
    assert check(config, "POST", "/", "", headers, body, "ssm", now=now) is None
    tampered = check(config, "POST", "/", "", headers, body.replace(b"true", b"false"),
                     "ssm", now=now)
    assert tampered is not None and tampered.body["__type"] == "InvalidSignatureException"
    late = check(config, "POST", "/", "", headers, body, "ssm",
                 now=now + dt.timedelta(minutes=16))
    assert late is not None and late.body["message"] == "Signature expired"
    wrong_service = check(config, "POST", "/", "", headers, body, "secretsmanager", now=now)
    assert wrong_service is not None and wrong_service.status == 403
    no_token = {k: v for k, v in headers.items() if k != "x-amz-security-token"}
    refused = check(config, "POST", "/", "", no_token, body, "ssm", now=now)
    assert refused is not None and refused.body["__type"] == "UnrecognizedClientException"


# ------------------------------------------------------- moto, IAM auth on


@pytest.fixture
def moto_url() -> Iterator[str]:
    """moto's server with IAM authentication after the first 3 (set-up) calls."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _assumed_role_credentials(url: str) -> Credentials:
    plain = {"endpoint_url": url, "region_name": "eu-west-1",
             "aws_access_key_id": "AKIASETUP0000000000", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **plain)  # type: ignore[call-overload]
    role = iam.create_role(RoleName="amibake-instance", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))
    iam.put_role_policy(RoleName="amibake-instance", PolicyName="secrets",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                            "Effect": "Allow", "Resource": "*", "Action": [
                                "ssm:GetParameter", "ssm:PutParameter",
                                "secretsmanager:GetSecretValue",
                                "secretsmanager:CreateSecret"]}]}))
    sts = boto3.client("sts", **plain)  # type: ignore[call-overload]
    creds = sts.assume_role(RoleArn=role["Role"]["Arn"],
                            RoleSessionName="i-0123456789abcdef0")["Credentials"]
    return Credentials(access_key_id=creds["AccessKeyId"],
                       secret_access_key=creds["SecretAccessKey"],
                       token=creds["SessionToken"])


def test_secrets_from_moto_with_signature_checks(fake_root: Path, moto_url: str) -> None:
    creds = _assumed_role_credentials(moto_url)
    signed = {"endpoint_url": moto_url, "region_name": "eu-west-1",
              "aws_access_key_id": creds.access_key_id,
              "aws_secret_access_key": creds.secret_access_key,
              "aws_session_token": creds.token}
    ssm = boto3.client("ssm", **signed)  # type: ignore[call-overload]
    ssm.put_parameter(Name="/smallpayroll/db-password", Value=PASSWORD, Type="SecureString")
    encrypted = ssm.get_parameter(Name="/smallpayroll/db-password")["Parameter"]["Value"]
    assert encrypted != PASSWORD  # a SecureString needs WithDecryption
    sm = boto3.client("secretsmanager", **signed)  # type: ignore[call-overload]
    sm.create_secret(Name="smallpayroll/db", SecretString="postgres://payroll@db/payroll_prod")
    # moto now refuses unsigned or badly signed calls:
    unsigned = boto3.client("ssm", **{**signed, "aws_secret_access_key": "wrong"})  # type: ignore[call-overload]
    with pytest.raises(unsigned.exceptions.ClientError):
        unsigned.get_parameter(Name="/smallpayroll/db-password", WithDecryption=True)

    config = ImdsConfig(region="eu-west-1", credentials=creds,
                        user_data=endpoint_user_data(moto_url))
    with ImdsServer(config) as imds:
        password = run_secret(fake_root, imds.url, "db_password")
        url = run_secret(fake_root, imds.url, "db_url")
    assert password.returncode == 0, password.stderr
    assert password.stdout == PASSWORD
    assert url.returncode == 0, url.stderr
    assert url.stdout == "postgres://payroll@db/payroll_prod"

    wrong = replace(config, credentials=replace(creds, secret_access_key="wrong-secret"))
    with ImdsServer(wrong) as imds:
        refused = run_secret(fake_root, imds.url, "db_password")
    assert refused.returncode == 1
    assert "ssm GetParameter: HTTP 403" in refused.stderr

    no_session = replace(config, credentials=replace(creds, token="not-the-session-token"))
    with ImdsServer(no_session) as imds:
        refused = run_secret(fake_root, imds.url, "db_url")
    assert refused.returncode == 1
    assert "secretsmanager GetSecretValue: HTTP" in refused.stderr
