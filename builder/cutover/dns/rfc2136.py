"""RFC 2136 dynamic update signed with TSIG (dnspython)."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from builder.cutover.config import TsigKey
from builder.cutover.dns.base import DnsProvider, Record, parse_hostport, query_a, zone_nameservers
from builder.errors import UserError
from builder.manifest.model import DnsSpec


class Rfc2136Dns(DnsProvider):
    def __init__(self, spec: DnsSpec, key: TsigKey, *, timeout: float = 5.0) -> None:
        super().__init__(spec)
        self.host, self.port = parse_hostport(spec.server)
        self.key = key
        self.timeout = timeout
        self.keyring = dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})

    def get(self) -> Record:
        q = dns.message.make_query(self.spec.record, dns.rdatatype.A)
        try:
            resp = dns.query.tcp(q, self.host, port=self.port, timeout=self.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            raise UserError(f"DNS server {self.spec.server} did not answer: {exc}") from exc
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.A:
                addrs = [r.address for r in rrset]
                if len(addrs) != 1:
                    raise UserError(f"{self.spec.record} has {len(addrs)} addresses; expected one")
                return Record(addrs[0], rrset.ttl)
        raise UserError(
            f"{self.spec.server} has no A record {self.spec.record}",
            hint="check cutover.dns.record and dns.server",
        )

    def set(self, address: str, ttl: int) -> None:
        zone = dns.name.from_text(self.spec.zone)
        name = dns.name.from_text(self.spec.record).relativize(zone)
        upd = dns.update.UpdateMessage(
            zone, keyring=self.keyring, keyname=dns.name.from_text(self.key.name),
            keyalgorithm=self.key.algorithm,
        )
        upd.replace(name, ttl, "A", address)
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
        if rcode != dns.rcode.NOERROR:
            raise UserError(
                f"DNS server {self.spec.server} refused the update: {dns.rcode.to_text(rcode)}",
                hint="the key needs an update ACL for the zone",
            )
        # the primary answers the new data at once; confirm before returning
        answer = query_a(self.host, self.port, self.spec.record)
        if answer.addresses != (address,) or answer.ttl != ttl:
            raise UserError(f"{self.spec.server} still answers {answer.addresses} ttl {answer.ttl}")

    def default_nameservers(self) -> list[tuple[str, int]]:
        return zone_nameservers(self.host, self.port, self.spec.zone)
