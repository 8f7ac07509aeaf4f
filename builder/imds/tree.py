"""The metadata tree: paths under /<version>/meta-data/ and /dynamic/.

A tree node is a `str` (a leaf's body) or a `dict` (a directory). Listings
follow IMDS: one entry a line, no trailing newline, directories end in `/`,
and `public-keys/` lists `0=<key name>` (cloud-init's crawler depends on
that form to find `public-keys/0/openssh-key`).
"""

from __future__ import annotations

import json
from typing import Union

from builder.imds.config import ImdsConfig

Node = Union[str, "dict[str, Node]"]

# The API versions IMDS answers (GET / lists them). cloud-init 22.4.2 asks
# for 2021-03-23, 2018-09-24, 2016-09-02 (extended) and 2009-04-04 (minimum).
VERSIONS: tuple[str, ...] = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
    "2008-02-01", "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01",
    "2012-01-12", "2014-02-25", "2014-11-05", "2015-10-20", "2016-04-19",
    "2016-06-30", "2016-09-02", "2018-03-28", "2018-08-17", "2018-09-24",
    "2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23", "2021-07-15",
    "2022-09-24", "latest",
)


def identity_document(config: ImdsConfig) -> dict[str, object]:
    """dynamic/instance-identity/document, with AWS's keys."""
    return {
        "accountId": config.account_id,
        "architecture": "x86_64",
        "availabilityZone": config.zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "imageId": config.ami_id,
        "instanceId": config.instance_id,
        "instanceType": config.instance_type,
        "kernelId": None,
        "marketplaceProductCodes": None,
        "pendingTime": config.pending_time,
        "privateIp": config.local_ipv4,
        "ramdiskId": None,
        "region": config.region,
        "version": "2017-09-30",
    }


def zone_id(region: str) -> str:
    """An AZ id in AWS's form: us-east-1 → use1-az1, eu-west-1 → euw1-az1."""
    parts = region.split("-")
    if len(parts) == 3 and parts[1]:
        return f"{parts[0]}{parts[1][0]}{parts[2]}-az1"
    return f"{region}-az1"


def credentials_document(config: ImdsConfig) -> str:
    creds = config.credentials
    return json.dumps({
        "Code": "Success",
        "LastUpdated": config.pending_time,
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.token,
        "Expiration": creds.expiration,
    }, indent=2)


def _interface(config: ImdsConfig) -> dict[str, Node]:
    iface: dict[str, Node] = {
        "device-number": "0",
        "interface-id": "eni-0123456789abcdef0",
        "local-hostname": config.local_hostname,
        "local-ipv4s": config.local_ipv4,
        "mac": config.mac,
        "owner-id": config.account_id,
        "security-group-ids": "sg-0123456789abcdef0",
        "security-groups": "default",
        "subnet-id": "subnet-0123456789abcdef0",
        "subnet-ipv4-cidr-block": config.subnet_cidr,
        "vpc-id": "vpc-0123456789abcdef0",
        "vpc-ipv4-cidr-block": config.subnet_cidr,
        "vpc-ipv4-cidr-blocks": config.subnet_cidr,
    }
    if config.public_ipv4:
        iface["public-hostname"] = config.public_hostname
        iface["public-ipv4s"] = config.public_ipv4
    return iface


def meta_data(config: ImdsConfig) -> dict[str, Node]:
    """The meta-data/ directory for `config`."""
    md: dict[str, Node] = {
        "ami-id": config.ami_id,
        "ami-launch-index": str(config.ami_launch_index),
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": dict(config.block_device_mapping),
        "hostname": config.local_hostname,
        "instance-action": "none",
        "instance-id": config.instance_id,
        "instance-life-cycle": "on-demand",
        "instance-type": config.instance_type,
        "local-hostname": config.local_hostname,
        "local-ipv4": config.local_ipv4,
        "mac": config.mac,
        "network": {"interfaces": {"macs": {config.mac: _interface(config)}}},
        "placement": {
            "availability-zone": config.zone,
            "availability-zone-id": zone_id(config.region),
            "region": config.region,
        },
        "profile": "default-hvm",
        "reservation-id": "r-0123456789abcdef0",
        "security-groups": "default",
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    if config.public_ipv4:
        md["public-hostname"] = config.public_hostname
        md["public-ipv4"] = config.public_ipv4
    if config.public_keys:
        keys: dict[str, Node] = {}
        for i, (name, key) in enumerate(zip(config.key_names(), config.public_keys, strict=True)):
            keys[f"{i}={name}"] = {"openssh-key": key.strip()}
        md["public-keys"] = keys
    if config.tags:
        md["tags"] = {"instance": dict(config.tags)}
    if config.iam_role:
        md["iam"] = {
            "info": json.dumps({
                "Code": "Success",
                "LastUpdated": config.pending_time,
                "InstanceProfileArn":
                    f"arn:aws:iam::{config.account_id}:instance-profile/{config.iam_role}",
                "InstanceProfileId": "AIPAAMIBAKELOCAL00001",
            }, indent=2),
            "security-credentials": {config.iam_role: credentials_document(config)},
        }
    return md


def version_root(config: ImdsConfig) -> dict[str, Node]:
    """/<version>/: meta-data, dynamic and (when there is any) user-data."""
    root: dict[str, Node] = {
        "dynamic": {
            "instance-identity": {
                "document": json.dumps(identity_document(config), indent=2),
            },
        },
        "meta-data": meta_data(config),
    }
    return root


def _entry_name(name: str, node: Node) -> str:
    if isinstance(node, dict) and "=" not in name:
        return f"{name}/"
    return name


def listing(node: dict[str, Node]) -> str:
    """A directory's listing; `0=name` entries (public-keys/) get no slash, as on EC2."""
    return "\n".join(_entry_name(k, v) for k, v in sorted(node.items()))


def resolve(tree: dict[str, Node], parts: list[str]) -> Node | None:
    """The node at `parts` (path components, empty ones dropped), or None.

    Under public-keys/ the index alone (`0`) names the `0=<name>` entry, as
    IMDS resolves it.
    """
    node: Node = tree
    for part in parts:
        if not isinstance(node, dict):
            return None
        if part in node:
            node = node[part]
            continue
        indexed = [k for k in node if k.split("=", 1)[0] == part and "=" in k]
        if len(indexed) != 1:
            return None
        node = node[indexed[0]]
    return node
