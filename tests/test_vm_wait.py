"""The shared waiter: N consecutive successes within bounded attempts."""

from __future__ import annotations

import pytest

from builder.wait import NotYet, Waiter, WaitTimeout, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def script(outcomes: list[object]):  # type: ignore[no-untyped-def]
    calls = iter(outcomes)

    def check() -> object:
        o = next(calls)
        if isinstance(o, BaseException):
            raise o
        return o
    return check


def test_returns_after_consecutive_successes() -> None:
    clock = FakeClock()
    check = script([NotYet("a"), 1, NotYet("b"), 2, 3, 4])
    got = wait_for(check, Waiter("x", attempts=10, interval=1, successes=3),
                   sleep=clock.sleep, clock=clock)
    assert got == 4  # the run 2,3,4 counts; 1 was broken by a failure
    assert clock.sleeps == [1] * 5


def test_gives_up_after_attempts_with_last_reason() -> None:
    clock = FakeClock()
    check = script([NotYet("one"), NotYet("two"), NotYet("three")])
    with pytest.raises(WaitTimeout) as err:
        wait_for(check, Waiter("the thing", attempts=3, interval=2),
                 sleep=clock.sleep, clock=clock)
    assert "the thing" in str(err.value) and "three" in str(err.value)
    assert err.value.attempts == 3
    assert clock.sleeps == [2, 2]  # no sleep after the last attempt


def test_timeout_bounds_before_attempts() -> None:
    clock = FakeClock()
    check = script([NotYet("slow")] * 100)
    with pytest.raises(WaitTimeout) as err:
        wait_for(check, Waiter("y", attempts=100, interval=5, timeout=12),
                 sleep=clock.sleep, clock=clock)
    assert err.value.attempts == 3  # t=0, 5, 10; the next would end past 12 s


def test_retry_on_listed_exceptions_only() -> None:
    clock = FakeClock()
    check = script([ConnectionRefusedError("refused"), "ok"])
    assert wait_for(check, Waiter("z", attempts=3, interval=1), retry_on=(OSError,),
                    sleep=clock.sleep, clock=clock) == "ok"
    with pytest.raises(KeyError):
        wait_for(script([KeyError("bug")]), Waiter("z", attempts=3), retry_on=(OSError,),
                 sleep=clock.sleep, clock=clock)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Waiter("w", attempts=2, successes=3)
