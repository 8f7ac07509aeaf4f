"""The local instance metadata service: IMDSv2 over a threaded HTTP server.

What it does, as AWS documents IMDS:
- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
  (1..21600, else 400) returns a session token; a PUT carrying
  `X-Forwarded-For` is refused (403), as IMDS refuses proxied token requests.
- `GET /<version>/...` with `X-aws-ec2-metadata-token`: an invalid or expired
  token gets 401; no token gets 401 when tokens are required
  (HttpTokens=required), IMDSv1 is answered when they are optional.
- `/`, `/<version>/`, directories (with or without a trailing slash) answer
  listings; unknown paths 404; `/<version>/user-data` 404 when there is none.
- POST / answers the SSM / Secrets Manager calls of `secrets_api`.

Malformed requests (a bad request line, a TTL that is not ASCII digits, a
Content-Length that is not a small non-negative number, a chunked body) get
400, and an answer that fails half-way gets 500: the connection is never
dropped without a response.

Faults for tests come from the config (outages, token TTL cap, token use
limit) and from `expire_tokens()`. Every request is recorded in `requests`.
Token lifetimes are measured with the `clock` given to the server (tests
pass a fake one instead of sleeping).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from builder.imds import secrets_api
from builder.imds.config import ImdsConfig
from builder.imds.tree import VERSIONS, listing, resolve, version_root

log = logging.getLogger("amibake.imds")

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
MAX_TTL = 21600
#: the largest request body read (the secrets API's JSON calls are tiny)
MAX_BODY = 64 * 1024
_DIGITS = re.compile(r"[0-9]{1,10}", re.ASCII)


class _BadRequest(Exception):
    """The request cannot be read; answered 400 and the connection closed."""


@dataclass(frozen=True)
class RequestRecord:
    """One request the service answered (for tests and --debug)."""

    method: str
    path: str
    status: int
    token: str | None
    forwarded_for: str | None


@dataclass
class _Token:
    expires: float  # the server's clock
    uses: int = 0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    imds: ImdsServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""
    timeout = 60  # close idle keep-alive connections
    # a request line that cannot be parsed is answered with a status line and
    # headers (the standard library's default, HTTP/0.9, sends a bare body)
    default_request_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise _BadRequest("Transfer-Encoding is not supported")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b""
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            raise _BadRequest("Content-Length must be one non-negative decimal number")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise _BadRequest(f"a body of more than {MAX_BODY} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise _BadRequest("the body ended before Content-Length")
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "text/plain") -> None:
        # Recorded before answering, so a client that has its answer sees it logged.
        self.server.imds._record(RequestRecord(
            method=self.command, path=urllib.parse.urlsplit(self.path).path, status=status,
            token=self.headers.get(TOKEN_HEADER),
            forwarded_for=self.headers.get("X-Forwarded-For"),
        ))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self._answered = False
        try:
            self._answer()
        except _BadRequest as exc:
            log.debug("400 %s: %s", self.requestline[:200], exc)
            self.close_connection = True  # the stream's framing is unknown from here
            self._send(400, b"Bad Request")
        except Exception:
            # a bug or a client that went away: answer if anything can still be
            # sent, never leave the client without a response
            log.exception("IMDS request failed: %s", self.requestline[:200])
            self.close_connection = True
            if not self._answered:
                with contextlib.suppress(OSError):
                    self._send(500, b"Internal Server Error")

    _answered = False

    def send_response(self, code: int, message: str | None = None) -> None:
        self._answered = True
        super().send_response(code, message)

    def _answer(self) -> None:
        imds = self.server.imds
        body = self._body()
        if imds._in_503_outage():
            self._send(503, b"Service Unavailable")
            return
        url = urllib.parse.urlsplit(self.path)
        if self.command == "POST":
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = secrets_api.handle(imds.config, "POST", url.path, url.query, headers, body)
            self._send(answer.status, answer.encoded(),
                       content_type="application/x-amz-json-1.1")
            return
        if url.path.rstrip("/") == "/latest/api/token":
            self._token()
            return
        if self.command not in ("GET", "HEAD"):
            self._send(405, b"Method Not Allowed")
            return
        denied = imds._check_token(self.headers.get(TOKEN_HEADER))
        if denied:
            self._send(401, b"Unauthorized")
            return
        status, payload = imds._lookup(url.path)
        self._send(status, payload)

    def _token(self) -> None:
        imds = self.server.imds
        if self.command != "PUT":
            self._send(405, b"Method Not Allowed")
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._send(403, b"Forbidden")
            return
        raw = (self.headers.get(TTL_HEADER) or "").strip()
        # ASCII digits only: str.isdigit() also takes "²" and "٦", which int() refuses
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_TTL:
            self._send(400, b"Bad Request")
            return
        token = imds._new_token(int(raw))
        self._send(200, token.encode(), headers={TTL_HEADER: raw})

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class ImdsServer:
    """`with ImdsServer(config) as imds:` serves `config` at `imds.url`."""

    def __init__(self, config: ImdsConfig, host: str = "127.0.0.1", port: int = 0,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.host = host
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._requests: list[RequestRecord] = []
        self._started = 0.0
        self._count = 0
        self._serving = False
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> ImdsServer:
        httpd = _HTTPServer((self.host, self._requested_port), _Handler,
                            bind_and_activate=False)
        httpd.imds = self
        try:
            httpd.server_bind()
        except OSError:
            httpd.server_close()
            raise
        self._httpd = httpd
        self._started = self.clock()
        refuse = max((o.seconds for o in self.config.outages if o.mode == "refuse"),
                     default=0.0)
        if refuse <= 0:
            self._activate()
        elif not math.isinf(refuse):
            self._timer = threading.Timer(refuse, self._activate)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _activate(self) -> None:
        with self._lock:
            if self._stopped or self._httpd is None or self._serving:
                return
            self._httpd.server_activate()
            self._serving = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"imds-{self.port}", daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            serving = self._serving
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            if serving:
                self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ImdsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the IMDS server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -------------------------------------------------------- test controls

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid (as if its TTL ran out)."""
        with self._lock:
            self._tokens.clear()

    def update(self, **changes: Any) -> None:
        """Serve a changed config from now on (e.g. a new instance-id)."""
        with self._lock:
            self.config = replace(self.config, **changes)

    # ------------------------------------------------------------ internals

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _in_503_outage(self) -> bool:
        with self._lock:
            index = self._count
            self._count += 1
            elapsed = self.clock() - self._started
            return any(
                o.mode == "503" and (index < o.requests or elapsed < o.seconds)
                for o in self.config.outages
            )

    def _new_token(self, ttl: int) -> str:
        life = float(ttl)
        if self.config.token_ttl_cap is not None:
            life = min(life, self.config.token_ttl_cap)
        token = secrets.token_urlsafe(42)
        with self._lock:
            self._tokens[token] = _Token(expires=self.clock() + life)
        return token

    def _check_token(self, token: str | None) -> bool:
        """True when the request must be refused with 401."""
        if token is None:
            return self.config.require_token
        with self._lock:
            state = self._tokens.get(token)
            if state is None:
                return True
            if self.clock() >= state.expires:
                del self._tokens[token]
                return True
            limit = self.config.token_max_uses
            if limit is not None and state.uses >= limit:
                del self._tokens[token]
                return True
            state.uses += 1
            return False

    def _lookup(self, path: str) -> tuple[int, bytes]:
        config = self.config
        parts = [p for p in path.split("/") if p]
        if not parts:
            return 200, "\n".join(VERSIONS).encode()
        version, rest = parts[0], parts[1:]
        if version not in VERSIONS:
            return 404, b"Not Found"
        if rest == ["user-data"]:
            if not config.user_data:
                return 404, b"Not Found"
            return 200, config.user_data
        tree = version_root(config)
        if not rest:
            names = sorted(f"{k}/" for k in tree)
            if config.user_data:
                names.append("user-data")
            return 200, "\n".join(names).encode()
        node = resolve(tree, rest)
        if node is None:
            return 404, b"Not Found"
        if isinstance(node, dict):
            return 200, listing(node).encode()
        return 200, node.encode()
