"""The one waiter: N consecutive successes within a bounded number of attempts.

Used for "the VM answers SSH", "nginx answers 200", "AMI available",
"replica caught up", "DNS answers the new address". A check returns a value
(success) or raises `NotYet` / one of `retry_on` (failure, with a reason).
The waiter gives up after `attempts` tries or `timeout` seconds, whichever
comes first, and names the last failure reason in its error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from builder.errors import UserError

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check that has not succeeded yet; its message is the reason."""


class WaitTimeout(UserError):
    """The condition did not hold within the bounds."""

    def __init__(self, what: str, attempts: int, elapsed: float, reason: str, hint: str) -> None:
        super().__init__(
            f"gave up waiting for {what} after {attempts} attempts ({elapsed:.0f} s): {reason}",
            hint=hint,
        )
        self.what = what
        self.attempts = attempts
        self.reason = reason


@dataclass(frozen=True)
class Waiter:
    """How long and how often to try, and how many successes in a row count."""

    what: str
    attempts: int = 60
    interval: float = 2.0
    successes: int = 1
    timeout: float | None = None
    hint: str = ""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.successes < 1 or self.successes > self.attempts:
            raise ValueError("need 1 <= successes <= attempts")


def wait_for(
    check: Callable[[], T],
    waiter: Waiter,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `check` until it succeeds `waiter.successes` times in a row.

    Returns the value of the last successful call. A failure (NotYet or an
    exception in `retry_on`) resets the run of successes. Any other exception
    propagates at once: a check that cannot ever succeed should say so.
    """
    catch: tuple[type[BaseException], ...] = (NotYet, *retry_on)
    start = clock()
    run = 0
    reason = "no attempt made"
    for attempt in range(1, waiter.attempts + 1):
        try:
            value = check()
        except catch as exc:
            run = 0
            reason = str(exc) or type(exc).__name__
        else:
            run += 1
            if run >= waiter.successes:
                return value
            reason = f"{run} of {waiter.successes} consecutive successes"
        elapsed = clock() - start
        remaining_tries = waiter.attempts - attempt
        if remaining_tries == 0:
            break
        if waiter.timeout is not None and elapsed + waiter.interval > waiter.timeout:
            raise WaitTimeout(waiter.what, attempt, elapsed, reason, waiter.hint)
        sleep(waiter.interval)
    raise WaitTimeout(waiter.what, waiter.attempts, clock() - start, reason, waiter.hint)
