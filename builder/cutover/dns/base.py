"""One interface for the record that moves: read it, lower its TTL, switch
its address, verify it on every authoritative server, and say how long
resolvers may still hand out the old address.

The record's "address" is an IP address (an A record) or a host name (a
CNAME to it: a load balancer's DNS name, `stack deploy`'s SiteAddress).
Names are compared and written absolute and in lower case (`canonical`);
a switch from one kind to the other replaces the record in one update, so
the old site's A record comes back on rollback."""

from __future__ import annotations

import ipaddress
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rdatatype
import dns.resolver

from builder.errors import UserError
from builder.manifest.field_checks import absolute_name, is_host_name
from builder.manifest.model import DnsSpec
from builder.wait import NotYet, Waiter, WaitTimeout, wait_for


@dataclass(frozen=True)
class Record:
    address: str
    ttl: int


@dataclass(frozen=True)
class ServerAnswer:
    server: str
    addresses: tuple[str, ...]
    ttl: int | None

    def ok(self, expected: str) -> bool:
        return self.addresses == (canonical(expected),)


#: record types that cannot share a name with a CNAME (asked before a switch to one)
OTHER_TYPES = ("AAAA", "MX", "TXT", "SPF", "SRV", "CAA", "HTTPS", "SVCB", "NS", "DS",
               "DNAME", "SSHFP", "TLSA", "NAPTR", "LOC", "HINFO", "RP", "PTR")


def record_type(address: str) -> str:
    """A for an IP address, CNAME for a host name (checked at load: fc.site_address)."""
    return "CNAME" if is_host_name(address) else "A"


def canonical(address: str) -> str:
    """An address as answers are compared: IPs in their normal form, names absolute
    and lower-case."""
    return absolute_name(address) if is_host_name(address) else \
        str(ipaddress.ip_address(address))


def same_address(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def answer_of(resp: dns.message.Message, name: str) -> tuple[tuple[str, ...], int | None]:
    """The record at `name` in a response to an A query: its CNAME target (a server
    may add the target's own records after it) or its A addresses."""
    owner = dns.name.from_text(name)
    for rrset in resp.answer:
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.CNAME:
            return tuple(canonical(r.target.to_text()) for r in rrset), rrset.ttl
    addrs: list[str] = []
    ttl: int | None = None
    for rrset in resp.answer:
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.A:
            addrs.extend(r.address for r in rrset)
            ttl = rrset.ttl
    return tuple(sorted(addrs)), ttl


def _server_addresses(servers: list[tuple[str, int]], what: str) -> list[tuple[str, int]]:
    """host[:port] pairs with names resolved by the system's resolver."""
    out: list[tuple[str, int]] = []
    for host, port in servers:
        try:
            ipaddress.ip_address(host)
            out.append((host, port))
        except ValueError:
            try:
                answer = dns.resolver.resolve(host, "A", lifetime=5)
            except dns.exception.DNSException as exc:
                raise UserError(f"cannot resolve {what} {host}: {exc}") from exc
            out.extend((r.address, port) for r in answer)
    return out


def resolve_site(spec: DnsSpec) -> str:
    """The IP address the smoke test connects to: new_address itself, or the first
    (sorted) IPv4 address its name resolves to, asked of dns.resolvers (default: the
    system's resolver), CNAMEs followed."""
    if not is_host_name(spec.new_address):
        return spec.new_address
    resolver = dns.resolver.Resolver(configure=not spec.resolvers)
    if spec.resolvers:
        servers = _server_addresses([parse_hostport(r) for r in spec.resolvers], "resolver")
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
    try:
        answer = resolver.resolve(absolute_name(spec.new_address), "A", lifetime=5)
    except dns.exception.DNSException as exc:
        raise UserError(
            f"new_address {spec.new_address} does not resolve: {exc}",
            hint="check cutover.dns.new_address (stack deploy's SiteAddress) and "
                 "dns.resolvers") from exc
    return sorted(r.address for r in answer)[0]


def parse_hostport(value: str, default_port: int = 53) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return value, default_port


def query_a(server: str, port: int, name: str, timeout: float = 2.0) -> ServerAnswer:
    """Ask one server directly (no recursion) for the A record (or CNAME) of `name`."""
    q = dns.message.make_query(name, dns.rdatatype.A)
    q.flags &= ~dns.flags.RD
    try:
        resp = dns.query.udp(q, server, port=port, timeout=timeout)
        if resp.flags & dns.flags.TC:
            resp = dns.query.tcp(q, server, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        raise UserError(f"DNS server {server}:{port} did not answer for {name}: {exc}") from exc
    addrs, ttl = answer_of(resp, name)
    return ServerAnswer(f"{server}:{port}", addrs, ttl)


def zone_nameservers(server: str, port: int, zone: str) -> list[tuple[str, int]]:
    """The zone's NS names asked of `server`, each resolved there too (glue)."""
    q = dns.message.make_query(zone, dns.rdatatype.NS)
    try:
        resp = dns.query.udp(q, server, port=port, timeout=2.0)
    except (dns.exception.DNSException, OSError) as exc:
        raise UserError(f"DNS server {server}:{port} did not answer NS {zone}: {exc}") from exc
    names = [r.target.to_text() for rrset in resp.answer
             if rrset.rdtype == dns.rdatatype.NS for r in rrset]
    out: list[tuple[str, int]] = []
    for name in sorted(names):
        for addr in query_a(server, port, name).addresses:
            out.append((addr, port))
    return out


class DnsProvider(ABC):
    """The record named by `spec.record` in `spec.zone`."""

    def __init__(self, spec: DnsSpec) -> None:
        self.spec = spec

    @abstractmethod
    def get(self) -> Record:
        """The record's current address and TTL, from the provider."""

    @abstractmethod
    def set(self, address: str, ttl: int) -> None:
        """Replace the record (address, TTL) and return once the change is live."""

    @abstractmethod
    def default_nameservers(self) -> list[tuple[str, int]]:
        """The zone's authoritative servers when the manifest names none."""

    @abstractmethod
    def other_types(self) -> list[str]:
        """Types of the records at the record's name other than A and CNAME."""

    def probe_update(self) -> Record:
        """Prove the credentials may update the record, changing nothing: the
        record written back as it is, by the path the switch takes."""
        rec = self.get()
        self.set(rec.address, rec.ttl)
        return rec

    def nameservers(self) -> list[tuple[str, int]]:
        """Addresses to ask: names (Route53's ns-….awsdns-… servers) are resolved."""
        servers = ([parse_hostport(s) for s in self.spec.nameservers] if self.spec.nameservers
                   else self.default_nameservers())
        return _server_addresses(servers, "name server")

    def check(self) -> list[ServerAnswer]:
        """What every authoritative server answers right now."""
        return [query_a(h, p, self.spec.record) for h, p in self.nameservers()]

    def wait_authoritative(
        self, expected: str, *, successes: int = 2, attempts: int = 600, interval: float = 0.05,
        confirm: float = 0.01, sleep: Callable[[float], None] = time.sleep,
    ) -> list[ServerAnswer]:
        """Every authoritative server answers `expected`, `successes` times in a
        row, within `attempts` rounds (builder.wait, the one waiter): `interval`
        after a round that disagreed (the update still propagating), `confirm`
        after one that agreed (the next round only has to say the same again;
        the DNS switch waits for it inside the window)."""
        answers: list[ServerAnswer] = []
        agreed = [False]

        def agree() -> list[ServerAnswer]:
            nonlocal answers
            agreed[0] = False
            answers = self.check()
            if not answers or not all(a.ok(expected) for a in answers):
                raise NotYet(f"not every server answers {expected}")
            agreed[0] = True
            return answers

        try:
            return wait_for(agree, Waiter(
                f"every authoritative server to answer {expected} for {self.spec.record}",
                attempts=attempts, interval=interval, successes=successes),
                sleep=lambda seconds: sleep(confirm if agreed[0] else seconds))
        except WaitTimeout:
            bad = ", ".join(f"{a.server} → {','.join(a.addresses) or 'nothing'}"
                            for a in answers if not a.ok(expected))
            raise UserError(
                f"authoritative servers do not all answer {expected} for {self.spec.record}: "
                f"{bad}",
                hint="the update may still be propagating; run again to retry",
            ) from None


def cache_expiry(switched_at: datetime, ttl_at_switch: int,
                 lowered_at: datetime | None, old_ttl: int | None) -> datetime:
    """When the last resolver may drop the old address: the TTL in force at the
    switch, or the old long TTL if it was lowered less than one old TTL before."""
    expiry = switched_at + timedelta(seconds=ttl_at_switch)
    if old_ttl is not None:
        long_expiry = (lowered_at or switched_at) + timedelta(seconds=old_ttl)
        if long_expiry > switched_at:
            expiry = max(expiry, min(long_expiry, switched_at + timedelta(seconds=old_ttl)))
    return expiry


def countdown(expiry: datetime, now: datetime) -> int:
    """Seconds resolvers may still return the old address (the `dig` countdown)."""
    return max(0, int((expiry - now).total_seconds() + 0.999))
