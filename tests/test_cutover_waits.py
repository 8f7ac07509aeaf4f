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
    """A subscription that never streams (no apply worker): the wait asks the
    old server's slot too, and gives up at the timeout on the fake clock."""
    old, new = pg_pair
    name = db_replicate.NAME
    old.sql(f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')")
    cfg: Any = SimpleNamespace(old=old.conn(), new=new.conn())
    with pytest.raises(UserError, match=f"subscription {name} is missing on the new server"):
        db_replicate.wait_caught_up(cfg, "0/1", timeout=5, clock=FakeTime().clock,
                                    sleep=FakeTime().sleep)
    new.sql(f"CREATE SUBSCRIPTION {name} CONNECTION '{old.dsn()}' PUBLICATION {name} "
            "WITH (connect = false)")
    t = FakeTime()
    with pytest.raises(UserError, match="did not reach FFFFFFFF/0 within 5 s"):
        db_replicate.wait_caught_up(cfg, "FFFFFFFF/0", timeout=5, clock=t.clock,
                                    sleep=t.sleep)
    assert 5 - 0.002 <= t.now <= 5 and t.slept > 2000  # polled all along, never slept for real
    # a position the old server's slot has confirmed: no wait at all
    confirmed = old.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots")[0][0]
    t = FakeTime()
    assert db_replicate.wait_caught_up(cfg, str(confirmed), timeout=30, clock=t.clock,
                                       sleep=t.sleep).startswith(f"caught up to {confirmed}")
    assert t.slept == 0
    # the old server gone while no apply worker runs: said at once, not at the timeout
    old.stop("immediate")
    try:
        t = FakeTime()
        with pytest.raises(UserError, match="old server is unreachable before the subscriber"):
            db_replicate.wait_caught_up(cfg, "FFFFFFFF/0", timeout=30, clock=t.clock,
                                        sleep=t.sleep)
        assert t.slept == 0
    finally:
        old.start()
    new.sql(f"DROP SUBSCRIPTION {name}")  # and the slot with it
