"""DNS providers behind one interface (base.DnsProvider)."""

from __future__ import annotations

from typing import Any

from builder.cutover.config import CutoverConfig
from builder.cutover.dns.base import DnsProvider, Record, parse_hostport
from builder.errors import UserError


def provider_for(cfg: CutoverConfig, *, route53: Any = None) -> DnsProvider:
    """The provider the manifest names; AWS clients are passed in."""
    dns = cfg.cutover.dns
    if dns.provider == "route53":
        from builder.cutover.dns.route53 import Route53Dns

        if route53 is None:
            raise UserError("the route53 DNS provider needs an AWS client",
                             hint="pass route53=Clients(...).client('route53')")
        return Route53Dns(route53, dns)
    from builder.cutover.dns.rfc2136 import Rfc2136Dns

    assert cfg.tsig is not None  # checked by config.derive
    return Rfc2136Dns(dns, cfg.tsig)


__all__ = ["DnsProvider", "Record", "parse_hostport", "provider_for"]
