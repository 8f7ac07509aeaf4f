"""The cutover to a load balancer's DNS name (`stack deploy`'s SiteAddress with
`load_balancer: alb`): `dns.new_address` is a host name, the switch makes the site's
record a CNAME to it (real Knot, RFC 2136 + TSIG; Route53 via moto), the smoke test
and pre-flight resolve it, the TTL steps and the by-hand runbook handle it, and
rollback puts the old A record back. Bad values are refused at load."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from builder.cutover import plan, preflight
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.dns.rfc2136 import Rfc2136Dns, nsupdate_script
from builder.cutover.dns.route53 import Route53Dns
from builder.cutover.procedure import (
    finish_cutover,
    plan_doc,
    rollback_cutover,
    run_cutover,
    status_doc,
)
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import DnsSpec, Manifest
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    OLD_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
SITE = f"{SERVER_NAME}."
#: an ALB's DNS name as CloudFormation gives it (out of the test zone: never resolved)
ELB = "Payroll-Web-1234567890.us-east-1.elb.amazonaws.com"
#: the load balancer's name inside the test zone, so the smoke test can resolve it
ALB = "web-alb.example.com"


def records(knot: Knot, name: str = SITE) -> dict[str, tuple[tuple[str, ...], int]]:
    """What Knot holds at `name`: type → (sorted values, TTL), asked for A (a CNAME
    answers that too) and TXT."""
    out: dict[str, tuple[tuple[str, ...], int]] = {}
    owner = dns.name.from_text(name)
    for rdtype in (dns.rdatatype.A, dns.rdatatype.TXT):
        resp = dns.query.tcp(dns.message.make_query(name, rdtype), OLD_ADDR, port=knot.port,
                             timeout=2)
        for rr in resp.answer:
            if rr.name == owner:
                out[dns.rdatatype.to_text(rr.rdtype)] = (
                    tuple(sorted(r.to_text() for r in rr)), rr.ttl)
    return out


def signed_update(knot: Knot, *changes: tuple[str, ...]) -> None:
    """Add records to the test zone the way any key holder would."""
    upd = dns.update.UpdateMessage("example.com.", keyring=dns.tsigkeyring.from_text(
        {knot.key.name: (knot.key.algorithm, knot.key.secret)}),
        keyalgorithm=knot.key.algorithm)
    for name, ttl, rdtype, value in changes:
        upd.add(name, int(ttl), rdtype, value)
    assert dns.query.tcp(upd, OLD_ADDR, port=knot.port, timeout=2).rcode() == 0


def _spec(knot: Knot, new_address: str = ELB, **kw: Any) -> DnsSpec:
    return DnsSpec(provider="rfc2136", zone="example.com.", record=SITE,
                   new_address=new_address, server=f"{OLD_ADDR}:{knot.port}", **kw)


# ------------------------------------------------------------------ load


def _problems(tmp_path: Path, new_line: str, record: str = "payroll.example.com.") -> list[str]:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    old_line = "    new_address: 203.0.113.25  # the web role's Elastic IP\n"
    assert old_line in text
    text = text.replace(old_line, new_line, 1).replace(
        "    record: payroll.example.com.\n", f"    record: {record}\n", 1)
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        load_manifest(tmp_path / "m.yaml")
    return [f"{p.location}: {p.message}".replace(f"{tmp_path}/", "") for p in info.value.problems]


def _at() -> str:
    """`m.yaml:LINE:18: `: where the seed's new_address value is (the seed changes)."""
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    line = text[:text.index("    new_address: ")].count("\n") + 1
    return f"m.yaml:{line}:18: "


@pytest.mark.parametrize("value", [
    "web",                              # one label: a typo, not a load balancer
    "10.0.0.256",                       # a mistyped address is not a name
    "203.0.113",
    "my_alb.elb.amazonaws.com",         # `_` is not in a host name
    "-alb.elb.amazonaws.com",
    "alb..elb.amazonaws.com",
    "'alb.elb.amazonaws.com. ; rm -rf /'",
    '"alb.elb.amazonaws.com\\nupdate add x 1 A 1.2.3.4"',  # a real newline (YAML "")
    "'alb.elb.amazonaws.com\"'",
    "'" + "a" * 64 + ".elb.amazonaws.com'",
    "'álb.elb.amazonaws.com'",
    "'2001:db8::25'",                   # the switch writes A records, not AAAA
])
def test_bad_new_address_refused_at_its_line(tmp_path: Path, value: str) -> None:
    problems = _problems(tmp_path, f"    new_address: {value}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{_at()}cutover.dns.new_address: ")
    assert ("is neither an IP address nor a DNS host name" in problems[0]
            or "is an IPv6 address: the switch writes an A record" in problems[0])


def test_cname_at_the_zone_apex_refused_with_the_way_out(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, f"    new_address: {ELB}\n", record="example.com.")
    assert problem.startswith(f"{_at()}{ELB} is a host name, so example.com. would "
                              "become a CNAME")
    assert "a CNAME cannot be at the zone's apex" in problem
    assert "sub-name such as www.example.com." in problem and "alias" in problem
    # without the final dot it is still the apex
    (problem,) = _problems(tmp_path, f"    new_address: {ELB}\n", record="example.com")
    assert "zone's apex" in problem


def test_cname_to_itself_refused(tmp_path: Path) -> None:
    (problem,) = _problems(tmp_path, "    new_address: PAYROLL.example.com\n")
    assert problem.startswith(_at()) and "a CNAME to itself" in problem


def test_host_name_and_ip_accepted(tmp_path: Path) -> None:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    for value in (ELB, ELB.lower() + ".", "198.51.100.7"):
        (tmp_path / "m.yaml").write_text(text.replace("203.0.113.25", value, 1))
        m = load_manifest(tmp_path / "m.yaml")
        assert m.cutover is not None and m.cutover.dns.new_address == value


# ------------------------------------------------------------------ Knot


def test_switch_to_a_cname_and_back_to_the_a_record(knot: Knot) -> None:
    p = Rfc2136Dns(_spec(knot), knot.key)
    p.set(ELB, 60)
    target = ELB.lower() + "."
    assert records(knot) == {"CNAME": ((target,), 60)}  # no A left beside it
    assert (p.get().address, p.get().ttl) == (target, 60)
    answers = p.wait_authoritative(ELB)  # both NS, the name compared without case
    assert len(answers) == 2 and all(a.addresses == (target,) for a in answers)
    p.set(ELB, 5)  # a TTL step on the CNAME keeps it a CNAME
    assert records(knot) == {"CNAME": ((target,), 5)}
    p.set(OLD_ADDR, 300)  # what rollback does
    assert records(knot) == {"A": ((OLD_ADDR,), 300)}
    assert knot.query(SITE) == ((OLD_ADDR,), 300)


def test_a_name_holding_other_records_is_refused_before_anything_changes(knot: Knot) -> None:
    signed_update(knot, ("payroll", "300", "TXT", '"v=spf1 -all"'))
    p = Rfc2136Dns(_spec(knot, ALB, resolvers=(f"{OLD_ADDR}:{knot.port}",)), knot.key)
    signed_update(knot, ("web-alb", "60", "A", NEW_ADDR))
    checks = {c.name: c for c in preflight.site_address(p)}
    assert checks["new site's name resolves"].ok
    assert checks["new site's name resolves"].detail == f"{ALB} → {NEW_ADDR}"
    bad = checks["record can become a CNAME"]
    assert not bad.ok and "also holds TXT" in bad.detail
    # the server itself will not put a CNAME beside other data: said, nothing moved
    with pytest.raises(UserError, match="holds records a CNAME cannot share its name with; "
                                         r".* changed nothing"):
        p.set(ALB, 60)
    assert knot.query(SITE) == ((OLD_ADDR,), 300)


def test_unresolvable_site_name_fails_preflight(knot: Knot) -> None:
    p = Rfc2136Dns(_spec(knot, "nowhere.example.com",
                         resolvers=(f"{OLD_ADDR}:{knot.port}",)), knot.key)
    (resolves, cname_ok) = preflight.site_address(p)
    assert not resolves.ok and "nowhere.example.com does not resolve" in resolves.detail
    assert "dns.resolvers" in resolves.hint
    assert cname_ok.ok


def test_runbook_by_hand_script_is_what_knsupdate_applies(knot: Knot, tmp_path: Path) -> None:
    """The runbook's nsupdate input, fed to Knot's own knsupdate with the key: the
    switch and its rollback do what amibake's update does."""
    knsupdate = shutil.which("knsupdate")
    assert knsupdate, "knot-dnsutils (Makefile's APT_PACKAGES) provides knsupdate"
    spec = _spec(knot)
    key = f"{knot.key.algorithm}:{knot.key.name}:{knot.key.secret}"
    switch = nsupdate_script(spec, ELB, 60)
    assert f"update add {SITE} 60 CNAME {ELB.lower()}." in switch
    subprocess.run([knsupdate, "-y", key], input=switch, text=True, check=True, timeout=30)
    assert records(knot) == {"CNAME": ((ELB.lower() + ".",), 60)}
    subprocess.run([knsupdate, "-y", key], input=nsupdate_script(spec, OLD_ADDR, 300),
                   text=True, check=True, timeout=30)
    assert records(knot) == {"A": ((OLD_ADDR,), 300)}


# ------------------------------------------------------------------ the whole run


def _alb_manifest(old: Cluster, new: Cluster, knot: Knot, sites: tuple[Site, Site],
                  **overrides: Any) -> Manifest:
    """The load balancer's name lives in the test zone (A → the new site's address);
    the cutover resolves it through the test's Knot, never the system's resolver."""
    signed_update(knot, ("web-alb", "60", "A", NEW_ADDR))
    m = cutover_manifest(old, new, knot, sites, **overrides)
    assert m.cutover is not None
    return replace(m, cutover=replace(m.cutover, dns=replace(
        m.cutover.dns, new_address=ALB, resolvers=(f"{OLD_ADDR}:{knot.port}",))))


def test_cutover_to_a_load_balancer_name_then_ttl_raised(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    m = _alb_manifest(old, new, knot, sites)
    cfg = derive(m)
    dns_ = provider_for(cfg)
    doc = plan_doc(cfg, dns_)
    assert doc["dns"]["new_type"] == "CNAME"
    assert any(c["check"] == "new site's name resolves" and c["ok"]
               for c in doc["preflight"])
    text = plan.to_markdown(doc)
    assert "its A record replaced by a CNAME to that name" in text
    assert f"update add {SITE} 5 CNAME {ALB}." in text  # the by-hand switch
    assert f"update add {SITE} 300 A {OLD_ADDR}" in text  # and its rollback

    path = tmp_path / "state.json"
    state = run_cutover(cfg, dns_, path, say=print, start_now=True)
    assert state.complete
    steps = {s["name"]: s for s in status_doc(cfg, path)["steps"]}
    # the smoke test went to the address the name resolves to, under the real host name
    assert f"at {ALB} ({NEW_ADDR})" in steps["smoke_new_site"]["detail"]
    assert records(knot) == {"CNAME": ((f"{ALB}.",), 5)}
    assert state.facts.old_address == OLD_ADDR

    done = derive(replace(m, cutover=replace(m.cutover, dns=replace(  # type: ignore[arg-type]
        m.cutover.dns, raise_ttl_after=0))))  # type: ignore[union-attr]
    finish_cutover(done, provider_for(done), path, say=print)
    assert records(knot) == {"CNAME": ((f"{ALB}.",), 300)}  # still a CNAME, TTL from before


def test_failed_gate_after_the_cname_switch_rolls_back_to_the_a_record(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(_alb_manifest(old, new, knot, sites, checksum_when="after_switch"))
    dns_ = provider_for(cfg)
    path = tmp_path / "state.json"

    def tamper(step: str) -> None:
        if step == "db_detach":
            new.sql("UPDATE employees SET salary = 0 WHERE id = 7")

    with pytest.raises(UserError, match="gate failed: table checksums"):
        run_cutover(cfg, dns_, path, say=print, start_now=True, after_step=tamper)
    assert records(knot) == {"CNAME": ((f"{ALB}.",), 5)}
    rollback_cutover(cfg, dns_, path, say=print)
    assert records(knot) == {"A": ((OLD_ADDR,), 300)}  # the old A record, its old TTL


# ------------------------------------------------------------------ Route53


def test_route53_cname_switch_deletes_the_a_record_in_the_same_batch(route53: Any) -> None:
    client, zone_id = route53
    batches: list[list[dict[str, Any]]] = []
    client.meta.events.register(
        "provide-client-params.route53.ChangeResourceRecordSets",
        lambda params, **_: batches.append(params["ChangeBatch"]["Changes"]))
    spec = DnsSpec(provider="route53", zone="example.com.", record=SITE, new_address=ELB,
                   hosted_zone_id=zone_id)
    p = Route53Dns(client, spec, waiter_delay=1)
    p.set(ELB, 60)
    a_record = {"Name": SITE, "Type": "A", "TTL": 3600,
                "ResourceRecords": [{"Value": "192.0.2.10"}]}
    cname = {"Name": SITE, "Type": "CNAME", "TTL": 60,
             "ResourceRecords": [{"Value": ELB.lower() + "."}]}
    assert batches[-1] == [{"Action": "DELETE", "ResourceRecordSet": a_record},
                           {"Action": "UPSERT", "ResourceRecordSet": cname}]
    assert (p.get().address, p.get().ttl) == (ELB.lower() + ".", 60)
    assert p.other_types() == []
    p.set("192.0.2.10", 3600)  # rollback
    assert batches[-1] == [{"Action": "DELETE", "ResourceRecordSet": cname},
                           {"Action": "UPSERT", "ResourceRecordSet": a_record}]
    assert (p.get().address, p.get().ttl) == ("192.0.2.10", 3600)
    types = {r["Type"] for r in client.list_resource_record_sets(
        HostedZoneId=zone_id)["ResourceRecordSets"] if r["Name"] == SITE}
    assert types == {"A"}


def test_site_address_from_the_stack_is_checked_like_the_manifest() -> None:
    """`--from-stack` (tests/test_stack_deploy.py runs it against moto): the output
    value gets the loader's checks, said as coming from the stack."""
    from builder.cutover.config import with_new_address

    m = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    assert m.cutover is not None
    took = with_new_address(m, ELB, "stack smallpayroll's SiteAddress")
    assert took.cutover is not None and took.cutover.dns.new_address == ELB
    with pytest.raises(UserError, match=r"^stack smallpayroll's SiteAddress 'alb\.x;y': "
                                        r"'alb\.x;y' is neither an IP address"):
        with_new_address(m, "alb.x;y", "stack smallpayroll's SiteAddress")
    apex = replace(m, cutover=replace(m.cutover, dns=replace(m.cutover.dns,
                                                             record="example.com.")))
    with pytest.raises(UserError, match="a CNAME cannot be at the zone's apex"):
        with_new_address(apex, ELB, "stack smallpayroll's SiteAddress")
