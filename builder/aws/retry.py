"""The one retry policy of every AWS call amibake makes.

botocore's own retries are off on every client (`total_max_attempts=1`, see
clients.py); this policy is installed instead as the clients' `needs-retry`
handler, the hook botocore's own retry modes use. So a request is re-sent at
most `max_attempts` times in all, whatever the service (EC2, EBS direct, S3,
SSM, STS), with exponential backoff and full jitter, on one list of
retryable errors, and the sleeps go through one injectable clock (tests
count the HTTP sends and the delays without waiting).

A call that still fails raises botocore's exception as usual;
`is_retryable(exc)` then tells whether running the same command again is
worth it (throttling, 5xx, a network error) or not (a refusal, a bad
request).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

log = logging.getLogger("amibake.aws.retry")

#: error codes worth sending the same request again for (any service)
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
    "InternalError", "InternalFailure", "InternalServerException", "InternalServerError",
    "ServiceUnavailable", "ServiceUnavailableException",
    "RequestTimeout", "RequestTimeoutException", "RequestTimeTooSkewed", "BadDigest",
})
#: failures on the way to AWS (no answer at all)
NETWORK_ERRORS = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
                  ConnectTimeoutError)


def _is_retryable_answer(code: str, status: int) -> bool:
    return code in RETRYABLE_CODES or status >= 500


def is_retryable(exc: BaseException) -> bool:
    """True for an error that the same request may get past later."""
    if isinstance(exc, NETWORK_ERRORS):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return _is_retryable_answer(code, status)
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` sends per request; delays up to `max_delay`."""

    max_attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 20.0


class Retries:
    """`RetryPolicy` as a botocore `needs-retry` handler; counts its retries."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.count = 0
        self._lock = threading.Lock()

    def install(self, client: Any) -> None:
        client.meta.events.register("needs-retry", self.needs_retry,
                                    unique_id="amibake-retry-policy")

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))]."""
        cap = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
        with self._lock:
            return self.rng.uniform(0, cap)

    def needs_retry(self, attempts: int, response: Any = None,
                    caught_exception: BaseException | None = None,
                    operation: Any = None, **_: Any) -> float | None:
        if caught_exception is not None:
            retry = isinstance(caught_exception, NETWORK_ERRORS)
            what = repr(caught_exception)
        elif response is not None:
            http, parsed = response
            code = str(parsed.get("Error", {}).get("Code", ""))
            status = int(getattr(http, "status_code", 0) or 0)
            retry = _is_retryable_answer(code, status)
            what = f"{code or status}"
        else:
            return None
        if not retry or attempts >= self.policy.max_attempts:
            return None
        delay = self.delay(attempts)
        with self._lock:
            self.count += 1
        name = getattr(operation, "name", "request")
        log.debug("%s: %s, attempt %d, retry in %.2f s", name, what, attempts, delay)
        self.sleep(delay)
        return 0  # botocore re-sends at once: the delay is slept above, on our clock
