"""The cutover's waits go through builder/wait.py with an injected clock: a
replica that never catches up gives up after the timeout without the test
sleeping through it (real PostgreSQL, a real replication slot)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from builder.cutover import db_replicate
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import Cluster


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1


def test_catch_up_wait_gives_up_on_the_fake_clock(pg_pair: tuple[Cluster, Cluster]) -> None:
    old, _ = pg_pair
    old.sql(f"SELECT pg_create_logical_replication_slot('{db_replicate.NAME}', 'pgoutput')")
    cfg: Any = SimpleNamespace(old=old.conn())
    t = FakeTime()
    with pytest.raises(UserError, match="did not reach FFFFFFFF/0 within 5"):
        db_replicate.wait_caught_up(cfg, "FFFFFFFF/0", timeout=5, clock=t.clock,
                                    sleep=t.sleep)
    assert 5 - 0.005 <= t.now <= 5 and t.slept > 500  # polled all along, never slept for real
    # a position the slot has confirmed: no wait at all
    confirmed = old.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")[0][0]
    t = FakeTime()
    assert db_replicate.wait_caught_up(cfg, str(confirmed), timeout=30, clock=t.clock,
                                       sleep=t.sleep).startswith(f"caught up to {confirmed}")
    assert t.slept == 0
    old.sql(f"SELECT pg_drop_replication_slot('{db_replicate.NAME}')")
    with pytest.raises(UserError, match="slot amibake_cutover is missing"):
        db_replicate.wait_caught_up(cfg, str(confirmed), timeout=30, clock=t.clock,
                                    sleep=t.sleep)
