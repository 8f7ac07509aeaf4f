"""amibake_imds: the instance metadata client of amibake's on-instance scripts.

One module, inlined by amibake where a script imports it (the import line is
replaced by this file's code when the script is rendered for an instance, see
builder/render/inline.py), so each shipped script stays one self-contained
file. Run from the repository, the scripts import it from their own directory.
Python 3 standard library only: an IMDSv2 client with bounded retries,
journal-aware logging, the user-data marker reader and roles.json (the
instance role's credentials and SigV4 signing are amibake_aws.py: only the
scripts that call AWS carry them).
"""

import email
import gzip
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

DEFAULT_IMDS_URL = "http://169.254.169.254"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_TTL = "21600"


class Failure(Exception):
    """A loud, explained failure: the message is the one line the log shows."""


class Log:
    """Journal-aware logging: `<N>` syslog priority prefixes when stderr is
    the journal (systemd's SyslogLevelPrefix), plain lines otherwise."""

    def __init__(self, prog: str, stream: TextIO | None = None) -> None:
        self.prog = prog
        self.stream = stream or sys.stderr
        self.journal = self._stderr_is_journal()

    def _stderr_is_journal(self) -> bool:
        value = os.environ.get("JOURNAL_STREAM", "")
        dev, _, ino = value.partition(":")
        try:
            st = os.fstat(self.stream.fileno())
            return bool(ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
        except (OSError, ValueError, AttributeError):
            return False

    def _emit(self, priority: int, label: str, message: str) -> None:
        if self.journal:
            line = f"<{priority}>{self.prog}: {message}"
        else:
            line = f"{self.prog}: {label}{message}"
        print(line, file=self.stream, flush=True)

    def info(self, message: str) -> None:
        self._emit(6, "", message)

    def warning(self, message: str) -> None:
        self._emit(4, "warning: ", message)

    def error(self, message: str) -> None:
        self._emit(3, "error: ", message)


class _Retry(Exception):
    pass


class Imds:
    """An IMDSv2 client: PUT a session token, send it with every GET.

    Connection errors, timeouts and 5xx answers are retried with exponential
    backoff (0.25 s doubling, at most 5 s apart) until `timeout` seconds have
    passed since the client was made; then Failure says what was tried. A 401
    means the token expired: a new one is fetched and the request retried.
    A service without tokens (404/405 on the token PUT) is read as IMDSv1.
    """

    def __init__(self, base_url: str, timeout: float, log: Log) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.deadline = time.monotonic() + self.timeout
        self.log = log
        self.token: str | None = None
        self.v1 = False
        self.attempts = 0
        # IMDS is link-local: never go through an http_proxy.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, headers: dict[str, str]
                 ) -> tuple[int, bytes]:
        remaining = self.deadline - time.monotonic()
        request = urllib.request.Request(
            self.base + path, method=method, headers=headers,
            data=b"" if method == "PUT" else None,
        )
        try:
            with self.opener.open(request, timeout=min(5.0, max(0.5, remaining))) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _fetch_token(self) -> str | None:
        status, body = self._request("PUT", "/latest/api/token", {TTL_HEADER: TOKEN_TTL})
        if status == 200:
            return body.decode().strip()
        if status in (404, 405):
            self.log.warning(f"IMDS at {self.base} has no token API; using IMDSv1")
            self.v1 = True
            return None
        if status == 403:
            raise Failure(f"IMDS at {self.base} refused a session token (403): is the "
                          "instance metadata endpoint disabled?")
        if status < 500:
            raise Failure(f"IMDS at {self.base} answered {status} to the token request")
        raise _Retry(f"HTTP {status} for PUT /latest/api/token")

    def get(self, path: str) -> bytes | None:
        """The body at `path` (bytes), or None when IMDS answers 404."""
        failures = 0
        while True:
            self.attempts += 1
            try:
                if self.token is None and not self.v1:
                    self.token = self._fetch_token()
                headers: dict[str, str] = {TOKEN_HEADER: self.token} if self.token else {}
                status, body = self._request("GET", path, headers)
                if status == 200:
                    return body
                if status == 404:
                    return None
                if status == 401:
                    self.log.info(f"IMDS answered 401 for {path}: fetching a new token")
                    self.token = None
                    self.v1 = False
                    if failures == 0:
                        failures += 1
                        continue  # the token expired: retry at once with a new one
                    raise _Retry(f"HTTP 401 for GET {path}")
                raise _Retry(f"HTTP {status} for GET {path}")
            except _Retry as exc:
                last = str(exc)
            except OSError as exc:  # refused, reset, timed out, unreachable
                reason = getattr(exc, "reason", exc)
                last = f"{type(reason).__name__}: {reason}"
            failures += 1
            delay = min(5.0, 0.25 * 2 ** (failures - 1))
            if time.monotonic() + delay > self.deadline:
                raise Failure(
                    f"instance metadata service {self.base} did not answer {path}: gave up "
                    f"after {failures} attempts in {self.timeout:.0f} s (last error: {last})")
            self.log.info(f"IMDS not ready ({last}); retrying in {delay:.2f} s")
            time.sleep(delay)

    def text(self, path: str) -> str | None:
        body = self.get(path)
        return None if body is None else body.decode("utf-8", "replace").strip()


def user_data_texts(raw: bytes) -> list[str]:
    """The text parts of user-data: gunzipped, multipart MIME unpacked."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    head = raw.lstrip()[:64].lower()
    if not (head.startswith(b"content-type:") or head.startswith(b"mime-version:")):
        return [raw.decode("utf-8", "replace")]
    texts = []
    for part in email.message_from_bytes(raw).walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        if payload[:2] == b"\x1f\x8b":
            payload = gzip.decompress(payload)
        texts.append(payload.decode("utf-8", "replace"))
    return texts


def user_data_markers(raw: bytes | None, key: str) -> list[str]:
    """Every value of `# <key>: <value>` lines in user-data, in order."""
    pattern = re.compile(r"^[ \t]*#[ \t]*" + re.escape(key) + r"[ \t]*:[ \t]*(\S+)[ \t]*$",
                         re.MULTILINE)
    values: list[str] = []
    for text in user_data_texts(raw or b""):
        values.extend(m.group(1) for m in pattern.finditer(text))
    return values


def prefixed(root: str, path: str) -> str:
    """`path` (absolute, on the instance) under the `root` prefix."""
    return os.path.join(root, path.lstrip("/"))


def load_roles_json(root: str) -> tuple[str, dict[str, Any]]:
    path = prefixed(root, "/etc/amibake/roles.json")
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except FileNotFoundError:
        raise Failure(f"{path} is missing: this image has no amibake roles") from None
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise Failure(f"{path}: expected a JSON object with \"version\": 1")
    return path, doc
