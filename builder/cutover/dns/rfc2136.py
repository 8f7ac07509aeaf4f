"""RFC 2136 dynamic update signed with TSIG (dnspython)."""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.IN.A import A

from builder.cutover.config import TsigKey
from builder.cutover.dns.base import (
    OTHER_TYPES,
    DnsProvider,
    Record,
    answer_of,
    canonical,
    parse_hostport,
    query_a,
    record_type,
    zone_nameservers,
)
from builder.errors import UserError
from builder.manifest.model import DnsSpec


def _rdata(address: str) -> dns.rdata.Rdata:
    if record_type(address) == "CNAME":
        return CNAME(dns.rdataclass.IN, dns.rdatatype.CNAME,
                     dns.name.from_text(canonical(address)))
    return A(dns.rdataclass.IN, dns.rdatatype.A, address)


def update_lines(record: str, address: str, ttl: int) -> list[tuple[Any, ...]]:
    """The update that points `record` at `address`: the other kind (A or CNAME)
    deleted, this one put in its place. Values are rdata objects (wire format)."""
    name = dns.name.from_text(record)
    kind = record_type(address)
    return [("delete", name, "A" if kind == "CNAME" else "CNAME"),
            ("replace", name, ttl, _rdata(address))]


def nsupdate_script(spec: DnsSpec, address: str, ttl: int) -> str:
    """The same update as `nsupdate` input, for the runbook's by-hand fallback: names
    absolute and every value printed by dnspython in zone-file syntax (escaped)."""
    host, port = parse_hostport(spec.server)
    out = [f"server {host} {port}", f"zone {dns.name.from_text(spec.zone).to_text()}"]
    for line in update_lines(spec.record, address, ttl):
        if line[0] == "delete":
            out.append(f"update delete {line[1].to_text()} {line[2]}")
        else:
            rdata = line[3]
            out.append(f"update delete {line[1].to_text()} "
                       f"{dns.rdatatype.to_text(rdata.rdtype)}")
            out.append(f"update add {line[1].to_text()} {line[2]} "
                       f"{dns.rdatatype.to_text(rdata.rdtype)} {rdata.to_text()}")
    return "\n".join([*out, "send"]) + "\n"


class Rfc2136Dns(DnsProvider):
    def __init__(self, spec: DnsSpec, key: TsigKey, *, timeout: float = 5.0) -> None:
        super().__init__(spec)
        self.host, self.port = parse_hostport(spec.server)
        self.key = key
        self.timeout = timeout
        self.keyring = dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})

    def _ask(self, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        q = dns.message.make_query(self.spec.record, rdtype)
        try:
            return dns.query.tcp(q, self.host, port=self.port, timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            raise UserError(f"DNS server {self.spec.server} did not answer: {exc}") from exc

    def get(self) -> Record:
        addrs, ttl = answer_of(self._ask(dns.rdatatype.A), self.spec.record)
        if addrs and ttl is not None:
            if len(addrs) != 1:
                raise UserError(f"{self.spec.record} has {len(addrs)} addresses; expected one")
            return Record(addrs[0], ttl)
        raise UserError(
            f"{self.spec.server} has no A record {self.spec.record}",
            hint="check cutover.dns.record and dns.server",
        )

    def other_types(self) -> list[str]:
        owner = dns.name.from_text(self.spec.record)
        found = []
        for rdtype in OTHER_TYPES:
            resp = self._ask(dns.rdatatype.from_text(rdtype))
            if any(rr.name == owner and rr.rdtype == dns.rdatatype.from_text(rdtype)
                   for rr in resp.answer):
                found.append(rdtype)
        return found

    def set(self, address: str, ttl: int) -> None:
        """One signed update: the other kind (A or CNAME) deleted, this one put in its
        place; the value goes in as data (dnspython's wire format), never as text."""
        kind = record_type(address)
        upd = dns.update.UpdateMessage(
            self.spec.zone, keyring=self.keyring, keyname=dns.name.from_text(self.key.name),
            keyalgorithm=self.key.algorithm,
        )
        if kind == "CNAME":  # refused whole (YXRRSET) rather than the A deleted alone
            for rdtype in OTHER_TYPES:
                upd.absent(dns.name.from_text(self.spec.record), rdtype)
        for line in update_lines(self.spec.record, address, ttl):
            if line[0] == "delete":
                upd.delete(line[1], line[2])
            else:
                upd.replace(line[1], ttl, line[3])
        try:
            resp = dns.query.tcp(upd, self.host, port=self.port, timeout=self.timeout)
        except dns.tsig.PeerError as exc:  # BADSIG / BADKEY / BADTIME from the server
            raise UserError(
                f"DNS server {self.spec.server} refused the TSIG key {self.key.name}: {exc}",
                hint="check the key in cutover.dns.tsig_key",
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise UserError(f"DNS update to {self.spec.server} failed: {exc}") from exc
        rcode = resp.rcode()
        if rcode == dns.rcode.YXRRSET:
            raise UserError(
                f"{self.spec.record} holds records a CNAME cannot share its name with; "
                f"{self.spec.server} changed nothing",
                hint="move them, or give the site a name of its own")
        if rcode != dns.rcode.NOERROR:
            raise UserError(
                f"DNS server {self.spec.server} refused the update: {dns.rcode.to_text(rcode)}",
                hint="the key needs an update ACL for the zone",
            )
        # the primary answers the new data at once; confirm before returning
        answer = query_a(self.host, self.port, self.spec.record)
        if not answer.ok(address) or answer.ttl != ttl:
            raise UserError(
                f"{self.spec.server} still answers {answer.addresses} ttl {answer.ttl}",
                hint="" if kind == "A" else
                "a CNAME cannot share its name with other records (AAAA, MX, TXT …): "
                "the server ignores it while they are there")

    def default_nameservers(self) -> list[tuple[str, int]]:
        return zone_nameservers(self.host, self.port, self.spec.zone)
