"""`cutover watch`: requests still reaching the old site after the switch,
read from the real nginx's access log (locally and over SSH), until the
cache countdown ends."""

from __future__ import annotations

import http.client
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from builder.cutover import watch
from builder.cutover.config import derive
from builder.cutover.state import CutoverState
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import Cluster, Knot, Site, Sshd, cutover_manifest


def _get(site: Site, path: str, agent: str) -> None:
    conn = http.client.HTTPConnection(site.address, site.port, timeout=5)
    conn.request("GET", path, headers={"User-Agent": agent})
    conn.getresponse().read()
    conn.close()


def _state(path: Path, switched: datetime, *, ttl: int = 5) -> None:
    state = CutoverState.new("m.yaml", "dump", ["dns_switch"])
    state.facts.dns_switched_at = switched.isoformat()
    state.facts.dns_switched_ttl = ttl
    state.facts.old_ttl = 300
    state.save(path)


@pytest.mark.parametrize("over_ssh", [False, True])
def test_watch_counts_users_on_the_old_site_until_caches_expire(
    over_ssh: bool, pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    sshd: Sshd, secret_env: None, tmp_path: Path,
) -> None:
    old_site = sites[0]
    old, new = pg_pair
    _get(old_site, "/", "before the switch")
    switched = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    # log times are whole seconds: the next requests come a second after "the switch"
    time.sleep(max(0.0, (switched + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()))
    for _ in range(3):
        _get(old_site, "/employees", "Mozilla/5.0 (a user's cached resolver)")
    _get(old_site, "/health", "amibake-cutover")  # our own checks are not users
    log = old_site.base / "access.log"
    with open(log, "a") as fh:  # a hostile line in the log is skipped, not shown
        fh.write('\x1b]0;pwned\x07 - - [xx] "GET /" 200 1 "-" "-"\n')
    m = cutover_manifest(old, new, knot, sites, strategy="dump", old_access_log=str(log))
    if over_ssh:
        assert m.cutover is not None
        m = replace(m, cutover=replace(m.cutover, old_web=f"ssh:{sshd.login}",
                                       old_web_ssh_options=sshd.options))
    cfg = derive(m)
    path = tmp_path / "s.json"
    _state(path, switched)
    said: list[str] = []
    doc = watch.watch(cfg, path, say=said.append, once=True)
    assert doc["requests"] == 3
    assert doc["clients"] == {"127.0.0.1": 3}
    assert doc["unparsed_lines"] == 1
    assert doc["cache_seconds_left"] > 0  # the old 300 s TTL cached before the lowering
    assert "3 request(s) on the old site since the switch" in said[0]
    assert "\x1b" not in said[0]

    # a switch long ago: the countdown is over, the watch ends by itself
    _state(path, switched - timedelta(hours=2))
    naps: list[float] = []
    doc = watch.watch(cfg, path, say=said.append, sleep=naps.append)
    assert doc["cache_seconds_left"] == 0 and naps == []
    assert doc["requests"] == 4  # since then: the hit before "the switch" too


def test_watch_before_the_switch_is_refused(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump"))
    path = tmp_path / "s.json"
    CutoverState.new("m.yaml", "dump", ["dns_switch"]).save(path)
    with pytest.raises(UserError, match="not been switched"):
        watch.watch(cfg, path, say=print, once=True)
