"""DNS providers: Knot with TSIG (RFC 2136) and Route53 via moto."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.update
import pytest

from builder.cutover.config import TsigKey
from builder.cutover.dns.base import cache_expiry, countdown
from builder.cutover.dns.rfc2136 import Rfc2136Dns
from builder.cutover.dns.route53 import Route53Dns
from builder.errors import UserError
from builder.manifest.model import DnsSpec
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import NEW_ADDR, OLD_ADDR, Knot


def _spec(knot: Knot, **kw: Any) -> DnsSpec:
    return DnsSpec(provider="rfc2136", zone="example.com.", record="payroll.example.com.",
                   new_address=NEW_ADDR, server=f"{OLD_ADDR}:{knot.port}", **kw)


def test_rfc2136_ttl_and_address_with_tsig(knot: Knot) -> None:
    p = Rfc2136Dns(_spec(knot), knot.key)
    rec = p.get()
    assert (rec.address, rec.ttl) == (OLD_ADDR, 300)
    p.set(OLD_ADDR, 60)
    assert knot.query("payroll.example.com.") == ((OLD_ADDR,), 60)
    p.set(NEW_ADDR, 60)
    # the zone's NS (ns1 → 127.0.0.1, ns2 → 127.0.0.2) are asked one by one
    answers = p.wait_authoritative(NEW_ADDR)
    assert sorted(a.server for a in answers) == [f"127.0.0.1:{knot.port}",
                                                  f"127.0.0.2:{knot.port}"]
    assert all(a.addresses == (NEW_ADDR,) and a.ttl == 60 for a in answers)


def test_rfc2136_wrong_key_is_refused(knot: Knot) -> None:
    wrong = TsigKey(knot.key.name, knot.key.algorithm,
                    base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises(UserError, match="refused the TSIG key"):
        Rfc2136Dns(_spec(knot), wrong).set(NEW_ADDR, 60)
    unknown = TsigKey("someone-else.", "hmac-sha256", knot.key.secret)
    with pytest.raises(UserError, match="refused"):
        Rfc2136Dns(_spec(knot), unknown).set(NEW_ADDR, 60)
    assert knot.query("payroll.example.com.") == ((OLD_ADDR,), 300)


def test_rfc2136_unsigned_update_is_refused(knot: Knot) -> None:
    upd = dns.update.UpdateMessage("example.com.")
    upd.replace("payroll", 60, "A", NEW_ADDR)
    resp = dns.query.tcp(upd, OLD_ADDR, port=knot.port, timeout=2)
    assert resp.rcode() == dns.rcode.NOTAUTH
    assert knot.query("payroll.example.com.") == ((OLD_ADDR,), 300)


def test_authoritative_waiter_gives_up_with_the_servers_that_disagree(knot: Knot) -> None:
    p = Rfc2136Dns(_spec(knot), knot.key)
    with pytest.raises(UserError, match=r"127\.0\.0\.1:\d+ → 127\.0\.0\.1"):
        p.wait_authoritative(NEW_ADDR, attempts=2, interval=0.01)


def test_authoritative_waiter_pauses_briefly_between_agreeing_rounds(knot: Knot) -> None:
    """Two rounds must agree: after a round that disagreed the waiter pauses
    `interval`, after one that agreed only `confirm` before asking again."""
    p = Rfc2136Dns(_spec(knot), knot.key)
    pauses: list[float] = []
    with pytest.raises(UserError):
        p.wait_authoritative(NEW_ADDR, attempts=3, interval=0.04, confirm=0.002,
                             sleep=pauses.append)
    assert pauses == [0.04, 0.04]  # still the old address: the full pause
    p.set(NEW_ADDR, 60)
    pauses.clear()
    answers = p.wait_authoritative(NEW_ADDR, interval=0.04, confirm=0.002, sleep=pauses.append)
    assert pauses == [0.002] and len(answers) == 2
    assert all(a.addresses == (NEW_ADDR,) for a in answers)


def test_explicit_nameservers_override_ns_lookup(knot: Knot) -> None:
    p = Rfc2136Dns(_spec(knot, nameservers=(f"127.0.0.2:{knot.port}",)), knot.key)
    assert [a.server for a in p.check()] == [f"127.0.0.2:{knot.port}"]


def test_cache_countdown() -> None:
    t0 = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    # lowered a day ahead from 1 h to 60 s: resolvers drop the old address 60 s after the switch
    exp = cache_expiry(t0, 60, t0 - timedelta(days=1), 3600)
    assert exp == t0 + timedelta(seconds=60)
    assert countdown(exp, t0 + timedelta(seconds=15)) == 45
    assert countdown(exp, t0 + timedelta(seconds=90)) == 0
    # lowered only 10 minutes ahead: the old 1 h TTL may still be cached for 50 min
    exp = cache_expiry(t0, 60, t0 - timedelta(minutes=10), 3600)
    assert exp == t0 + timedelta(minutes=50)


def test_route53_upsert_then_waits_for_insync(route53: Any) -> None:
    client, zone_id = route53
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(event_name: str, params: dict[str, Any], **_: Any) -> None:
        sent.append((event_name.split(".")[-1], params))

    client.meta.events.register("provide-client-params.route53.*", record)
    spec = DnsSpec(provider="route53", zone="example.com.", record="payroll.example.com.",
                   new_address="203.0.113.25", hosted_zone_id=zone_id)
    p = Route53Dns(client, spec, waiter_delay=1)
    assert (p.get().address, p.get().ttl) == ("192.0.2.10", 3600)
    sent.clear()
    p.set("203.0.113.25", 60)
    ops = [op for op, _ in sent]
    # one read of the name's record sets (is there a CNAME to delete?), then the change
    assert ops[:2] == ["ListResourceRecordSets", "ChangeResourceRecordSets"]
    assert "GetChange" in ops[2:]
    batch = sent[1][1]["ChangeBatch"]
    assert batch["Changes"] == [{"Action": "UPSERT", "ResourceRecordSet": {
        "Name": "payroll.example.com.", "Type": "A", "TTL": 60,
        "ResourceRecords": [{"Value": "203.0.113.25"}]}}]
    get_change = next(params for op, params in sent if op == "GetChange")
    assert get_change["Id"]  # the waiter polled the change the UPSERT returned
    assert (p.get().address, p.get().ttl) == ("203.0.113.25", 60)


def test_route53_missing_record(route53: Any) -> None:
    client, zone_id = route53
    spec = DnsSpec(provider="route53", zone="example.com.", record="nope.example.com.",
                   new_address="203.0.113.25", hosted_zone_id=zone_id)
    with pytest.raises(UserError, match="no A record nope.example.com."):
        Route53Dns(client, spec).get()


def test_route53_waiter_failure_surfaces(route53: Any) -> None:
    """A change that never reaches INSYNC: the waiter gives up."""
    client, zone_id = route53
    spec = DnsSpec(provider="route53", zone="example.com.", record="payroll.example.com.",
                   new_address="203.0.113.25", hosted_zone_id=zone_id)

    def pending(parsed: dict[str, Any], **_: Any) -> None:
        parsed["ChangeInfo"]["Status"] = "PENDING"

    client.meta.events.register("after-call.route53.GetChange",
                                lambda parsed, **kw: pending(parsed))
    with pytest.raises(UserError, match="not INSYNC"):
        Route53Dns(client, spec, waiter_delay=0, waiter_attempts=2).set("203.0.113.25", 60)
