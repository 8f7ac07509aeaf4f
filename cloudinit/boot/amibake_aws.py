"""amibake_aws: the instance role's credentials and AWS Signature Version 4, for the
on-instance scripts that call AWS.

Inlined by amibake where a script imports it (builder/render/inline.py), like
amibake_imds.py; kept apart from it so that scripts which never call AWS (the
dispatcher) do not carry it in user-data. Python 3 standard library only.
"""

import datetime
import hashlib
import hmac
import json
import urllib.parse


def _hmac(key, msg):
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def sign(method, url, headers, body, creds, region, service, now=None):
    """Add SigV4 headers (X-Amz-Date, X-Amz-Security-Token, Authorization)."""
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers)
    headers["Host"] = parts.netloc
    headers["X-Amz-Date"] = amz_date
    if creds.get("Token"):
        headers["X-Amz-Security-Token"] = creds["Token"]
    canonical = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed = sorted(canonical)
    query = "&".join(
        "{}={}".format(urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    request = "\n".join([
        method,
        urllib.parse.quote(parts.path or "/", safe="/~"),
        query,
        "".join(f"{k}:{canonical[k]}\n" for k in signed),
        ";".join(signed),
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + creds["SecretAccessKey"]).encode("utf-8"), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    return headers


def role_credentials(imds, purpose):
    """(credentials, None) of the instance role (meta-data/iam/security-credentials/<role>:
    a dict with AccessKeyId, SecretAccessKey, Token), or (None, the one line that says why
    not); `purpose` completes the hint ("an instance profile that <purpose>")."""
    listing = imds.text("/latest/meta-data/iam/security-credentials/")
    if not listing:
        return None, (f"this instance has no IAM role (IMDS {imds.base}/latest/meta-data/iam/"
                      f"security-credentials/ is empty): attach an instance profile "
                      f"that {purpose}")
    role = listing.splitlines()[0].strip()
    raw = imds.text(f"/latest/meta-data/iam/security-credentials/{role}")
    try:
        creds = json.loads(raw or "")
    except ValueError:
        creds = None
    if not isinstance(creds, dict) or not creds.get("AccessKeyId") \
            or not creds.get("SecretAccessKey"):
        return None, f"IMDS credentials of role {role!r} are not usable JSON"
    return creds, None
