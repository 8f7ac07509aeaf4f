"""Route53: UPSERT the record, then wait until the change is INSYNC."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from builder.cutover.dns.base import DnsProvider, Record, canonical, record_type
from builder.errors import UserError
from builder.manifest.model import DnsSpec


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


class Route53Dns(DnsProvider):
    def __init__(self, client: Any, spec: DnsSpec, *, waiter_delay: int = 2,
                 waiter_attempts: int = 150) -> None:
        super().__init__(spec)
        self.client = client
        self.zone_id = spec.hosted_zone_id
        self.waiter_delay = waiter_delay
        self.waiter_attempts = waiter_attempts

    def _rrsets(self) -> list[dict[str, Any]]:
        """The record sets at the record's name, as Route53 lists them."""
        name = _fqdn(self.spec.record)
        try:
            resp = self.client.list_resource_record_sets(
                HostedZoneId=self.zone_id, StartRecordName=name, MaxItems="20")
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"Route53 zone {self.zone_id}: {exc}",
                            hint="check AWS credentials and cutover.dns.hosted_zone_id") from exc
        return [r for r in resp.get("ResourceRecordSets", [])
                if _fqdn(r["Name"]).lower() == name.lower()]

    def get(self) -> Record:
        name = _fqdn(self.spec.record)
        for rrset in self._rrsets():
            if rrset["Type"] in ("A", "CNAME") and "ResourceRecords" in rrset:
                values = [r["Value"] for r in rrset["ResourceRecords"]]
                if len(values) != 1:
                    raise UserError(f"{name} has {len(values)} addresses; expected exactly one")
                return Record(canonical(values[0]), int(rrset["TTL"]))
        raise UserError(
            f"Route53 zone {self.zone_id} has no A record {name}",
            hint="check cutover.dns.record and hosted_zone_id",
        )

    def other_types(self) -> list[str]:
        return sorted({r["Type"] for r in self._rrsets()} - {"A", "CNAME"})

    def set(self, address: str, ttl: int) -> None:
        try:
            resp = self._change(address, ttl)
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"Route53 change of {self.spec.record} failed: {exc}",
                            hint="check AWS credentials and cutover.dns.hosted_zone_id") from exc
        self._wait(resp["ChangeInfo"]["Id"])

    def _change(self, address: str, ttl: int) -> Any:
        """One batch (Route53 applies it whole): the record of the other kind (A or
        CNAME) deleted exactly as it is, then this one upserted."""
        kind = record_type(address)
        value = canonical(address)
        changes: list[dict[str, Any]] = [
            {"Action": "DELETE", "ResourceRecordSet": rrset} for rrset in self._rrsets()
            if rrset["Type"] in ("A", "CNAME") and rrset["Type"] != kind]
        changes.append({
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": _fqdn(self.spec.record),
                "Type": kind,
                "TTL": ttl,
                "ResourceRecords": [{"Value": value}],
            },
        })
        return self.client.change_resource_record_sets(
            HostedZoneId=self.zone_id,
            ChangeBatch={"Comment": "amibake cutover", "Changes": changes},
        )

    def _wait(self, change_id: str) -> None:
        try:
            self.client.get_waiter("resource_record_sets_changed").wait(
                Id=change_id,
                WaiterConfig={"Delay": self.waiter_delay, "MaxAttempts": self.waiter_attempts},
            )
        except WaiterError as exc:
            raise UserError(
                f"Route53 change {change_id} is not INSYNC after "
                f"{self.waiter_delay * self.waiter_attempts} s",
                hint="run again: the UPSERT is idempotent and the wait starts over",
            ) from exc

    def default_nameservers(self) -> list[tuple[str, int]]:
        try:
            resp = self.client.get_hosted_zone(Id=self.zone_id)
        except (BotoCoreError, ClientError) as exc:
            raise UserError(f"Route53 zone {self.zone_id}: {exc}") from exc
        return [(ns, 53) for ns in resp.get("DelegationSet", {}).get("NameServers", [])]
