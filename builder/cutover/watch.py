"""`amibake cutover watch`: after the DNS switch, the requests still reaching
the old site (its nginx access log, locally or over the old_web SSH), until
the cache countdown ends — the seed's `tail -f` of the old log.

The log is read back from a server and is not trusted: lines are parsed
strictly (nginx's combined format), anything else is skipped and counted,
and only client addresses that parse as IP addresses are shown."""

from __future__ import annotations

import ipaddress
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.cutover import remote
from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import countdown
from builder.cutover.state import CutoverState
from builder.cutover.steps import expiry
from builder.errors import UserError
from builder.proc import CommandError

#: the end of the log read each time (a busy old site's day fits)
MAX_TAIL = 32 * 2**20
_LINE = re.compile(r'(?P<addr>[0-9A-Fa-f.:]{2,45}) \S+ \S+ \[(?P<time>[^\]]{26})\] '
                   r'"[^"]*" (?P<status>[0-9]{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"')
#: our own checks (smoke tests, rollback) are not users
_OWN_AGENT = "amibake-cutover"


def _tail(cfg: CutoverConfig) -> str:
    cut = cfg.cutover
    path = cut.old_access_log
    if cut.old_web == "local":
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - MAX_TAIL))
                data = fh.read(MAX_TAIL)
        except OSError as exc:
            raise UserError(f"cannot read the old site's access log {path}: {exc.strerror}",
                            hint="set cutover.old_access_log") from exc
        return data.decode("utf-8", "replace")  # odd bytes fail the line's grammar
    try:
        return remote.command(cut.old_web, cut.old_web_ssh_options,
                              f"tail -c {MAX_TAIL} -- {shlex.quote(path)}", setting="old_web")
    except CommandError as err:
        raise UserError(f"cannot read {path} on {cut.old_web.removeprefix('ssh:')}: "
                        f"{err.message}", hint="check cutover.old_access_log and SSH access") \
            from err


def report(cfg: CutoverConfig, state: CutoverState, now: datetime | None = None) -> dict[str, Any]:
    f = state.facts
    if not f.dns_switched_at:
        raise UserError("the DNS record has not been switched yet: nothing to watch",
                        hint="`amibake cutover run` first")
    since = datetime.fromisoformat(f.dns_switched_at)
    now = now or datetime.now(UTC)
    clients: Counter[str] = Counter()
    skipped = 0
    last: datetime | None = None
    for line in _tail(cfg).splitlines():
        m = _LINE.fullmatch(line)
        if not m:
            skipped += 1
            continue
        try:
            at = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
            addr = str(ipaddress.ip_address(m["addr"]))
        except ValueError:
            skipped += 1
            continue
        if at < since or m["agent"] == _OWN_AGENT:
            continue
        clients[addr] += 1
        last = at if last is None or at > last else last
    return {"since": since.isoformat(), "requests": sum(clients.values()),
            "clients": dict(clients.most_common(10)), "last_request": last.isoformat()
            if last else None, "unparsed_lines": skipped,
            "cache_seconds_left": countdown(expiry(state), now)}


def line(doc: dict[str, Any]) -> str:
    who = ", ".join(f"{a} ×{n}" for a, n in doc["clients"].items())
    return (f"{doc['requests']} request(s) on the old site since the switch"
            + (f" (last {doc['last_request']}; {who})" if doc["requests"] else "")
            + f"; caches may hold the old address {doc['cache_seconds_left']} s more")


def watch(cfg: CutoverConfig, state_path: Path, *, say: Callable[[str], None], once: bool = False,
          interval: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Report every `interval` seconds until the cache countdown ends (or once)."""
    state = CutoverState.load(state_path)
    while True:
        doc = report(cfg, state)
        say(line(doc))
        if once or not doc["cache_seconds_left"]:
            return doc
        sleep(min(interval, doc["cache_seconds_left"]))
