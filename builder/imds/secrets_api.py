"""SSM GetParameter and Secrets Manager GetSecretValue for local VMs.

Local VMs have no AWS to ask for their secrets, so the metadata emulator
also answers the two JSON-protocol calls `amibake-secret` makes, at POST /
with `X-Amz-Target`. Requests must be SigV4-signed with the instance role's
credentials the emulator hands out (meta-data/iam/security-credentials/):
the signature is recomputed here and compared, as AWS does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from builder.imds.config import ImdsConfig

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=15)
TARGETS = {
    "AmazonSSM.GetParameter": "ssm",
    "secretsmanager.GetSecretValue": "secretsmanager",
}
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]

    def encoded(self) -> bytes:
        return json.dumps(self.body, sort_keys=True).encode()


def _error(status: int, kind: str, message: str) -> ApiResponse:
    return ApiResponse(status, {"__type": kind, "message": message})


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str],
    signed: list[str], body: bytes,
) -> str:
    """SigV4's canonical request, from the request as it was received."""
    uri = urllib.parse.quote(urllib.parse.unquote(path) or "/", safe="/~")
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in pairs
    )
    lines = [
        f"{name}:{' '.join((headers.get(name) or '').split())}" for name in signed
    ]
    payload = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    return "\n".join(
        [method, uri, canonical_query, "\n".join(lines) + "\n", ";".join(signed), payload]
    )


def check_signature(
    config: ImdsConfig, method: str, path: str, query: str,
    headers: Mapping[str, str], body: bytes, service: str,
    now: dt.datetime | None = None,
) -> ApiResponse | None:
    """None when the request is signed by the instance role; else the error."""
    auth = headers.get("authorization")
    if not auth:
        return _error(400, "MissingAuthenticationTokenException",
                      "Request is missing Authentication Token")
    match = _AUTH_RE.match(auth.strip())
    if not match:
        return _error(400, "IncompleteSignatureException",
                      f"Authorization header is not a {ALGORITHM} signature")
    scope = match["cred"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return _error(400, "IncompleteSignatureException", "malformed credential scope")
    akid, date, region, scope_service, _ = scope
    creds = config.credentials
    if akid != creds.access_key_id:
        return _error(400, "UnrecognizedClientException",
                      "The security token included in the request is invalid.")
    if creds.token and headers.get("x-amz-security-token") != creds.token:
        return _error(400, "UnrecognizedClientException",
                      "The security token included in the request is invalid.")
    if scope_service != service or region != config.region:
        return _error(403, "InvalidSignatureException",
                      f"Credential should be scoped to region {config.region!r} "
                      f"and service {service!r}")
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return _error(403, "InvalidSignatureException",
                      "SignedHeaders must include host and x-amz-date")
    amz_date = headers.get("x-amz-date") or ""
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return _error(400, "IncompleteSignatureException", f"bad X-Amz-Date {amz_date!r}")
    if amz_date[:8] != date:
        return _error(403, "InvalidSignatureException",
                      "X-Amz-Date does not match the credential scope's date")
    now = now or dt.datetime.now(dt.UTC)
    if abs(now - when) > MAX_SKEW:
        return _error(400, "InvalidSignatureException", "Signature expired")
    creq = canonical_request(method, path, query, headers, signed, body)
    string_to_sign = "\n".join([
        ALGORITHM, amz_date, "/".join(scope[1:]),
        hashlib.sha256(creq.encode()).hexdigest(),
    ])
    key = signing_key(creds.secret_access_key, date, region, service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["sig"]):
        return _error(403, "InvalidSignatureException",
                      "The request signature we calculated does not match the "
                      "signature you provided.")
    return None


def _get_parameter(config: ImdsConfig, request: dict[str, Any]) -> ApiResponse:
    name = str(request.get("Name", ""))
    if name not in config.secrets:
        return _error(400, "ParameterNotFound", f"Parameter {name} not found.")
    value = config.secrets[name]
    if not request.get("WithDecryption"):
        value = base64.b64encode(b"amibake-kms:" + value.encode()).decode()
    arn_name = name if name.startswith("/") else f"/{name}"
    return ApiResponse(200, {"Parameter": {
        "ARN": f"arn:aws:ssm:{config.region}:{config.account_id}:parameter{arn_name}",
        "DataType": "text",
        "LastModifiedDate": 1764000000.0,
        "Name": name,
        "Type": "SecureString",
        "Value": value,
        "Version": 1,
    }})


def _get_secret_value(config: ImdsConfig, request: dict[str, Any]) -> ApiResponse:
    name = str(request.get("SecretId", ""))
    if name not in config.secrets:
        return _error(400, "ResourceNotFoundException",
                      "Secrets Manager can't find the specified secret.")
    return ApiResponse(200, {
        "ARN": f"arn:aws:secretsmanager:{config.region}:{config.account_id}:secret:{name}",
        "CreatedDate": 1764000000.0,
        "Name": name,
        "SecretString": config.secrets[name],
        "VersionId": "00000000-0000-4000-8000-000000000001",
        "VersionStages": ["AWSCURRENT"],
    })


def handle(
    config: ImdsConfig, method: str, path: str, query: str,
    headers: Mapping[str, str], body: bytes,
) -> ApiResponse:
    """Answer one POST: check the target, the signature, then the call.

    `headers` must be keyed by lower-case names.
    """
    target = headers.get("x-amz-target", "")
    service = TARGETS.get(target)
    if service is None:
        return _error(400, "UnknownOperationException",
                      f"the local secrets API answers only {', '.join(sorted(TARGETS))}")
    failure = check_signature(config, method, path, query, headers, body, service)
    if failure is not None:
        return failure
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return _error(400, "SerializationException", "request body is not JSON")
    if not isinstance(request, dict):
        return _error(400, "SerializationException", "request body is not a JSON object")
    if service == "ssm":
        return _get_parameter(config, request)
    return _get_secret_value(config, request)
