"""The manifest's `stack:` section: the whole app as one CloudFormation stack.

Declared like the rest of the model (model.py's `setting`): each key once,
with its help and the check of where its value goes. Checks across settings
(counts, the db role, TLS without a load balancer, instance storage) are in
stack_checks.py. builder/stack/template.py turns this into a template.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from packaging.version import Version

from builder.manifest import field_checks as fc
from builder.manifest.model import setting

A = re.ASCII
VPC_ID = re.compile(r"vpc-[0-9a-f]{8}([0-9a-f]{9})?", A)
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8}([0-9a-f]{9})?", A)
AZ = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-[0-9]{1,2}[a-z]", A)
ACM_ARN = re.compile(r"arn:aws(-[a-z]+)*:acm:[a-z]{2}(-gov)?-[a-z]+-[0-9]{1,2}:[0-9]{12}:"
                     r"certificate/[0-9a-f-]{36}", A)
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}", A)
#: CloudFormation's stack name grammar (also the private zone's first label)
STACK_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}", A)
MAX_INSTANCES = 100

vpc_id = fc.matches(VPC_ID, "a VPC id such as vpc-0123456789abcdef0")
subnet_id = fc.matches(SUBNET_ID, "a subnet id such as subnet-0123456789abcdef0")
availability_zone = fc.matches(AZ, "an availability zone such as us-east-1a")
certificate_arn = fc.matches(ACM_ARN, "an ACM certificate ARN "
                                      "(arn:aws:acm:REGION:ACCOUNT:certificate/UUID)")
key_name = fc.matches(KEY_NAME, "an EC2 key pair name (ASCII letters, digits and _.-)")
stack_name = fc.optional(fc.matches(
    STACK_NAME, "a stack name: lower-case letters, digits and '-', starting with a letter "
                "(at most 63)"))
instances = fc.between(0, MAX_INSTANCES)


def host_cidr(value: str) -> str | None:
    """The one address allowed to SSH in: a /32 (IPv4) or /128 (IPv6), never a network."""
    if not value:
        return None
    problem = fc.cidr(value)
    if problem:
        return problem
    net = ipaddress.ip_network(value)
    if net.prefixlen != net.max_prefixlen:
        return (f"{value} is a network of {net.num_addresses} addresses; SSH is opened to one "
                f"address only: write your address as a /{net.max_prefixlen}")
    return None


@dataclass(frozen=True, kw_only=True)
class Tls:
    """HTTPS on the load balancer with an ACM certificate; HTTP redirects to HTTPS."""

    certificate_arn: str = setting(help="ACM certificate ARN for the HTTPS listener",
                                   check=certificate_arn)


@dataclass(frozen=True, kw_only=True)
class ExistingVpc:
    """A VPC that already exists: the stack only adds its own resources to it."""

    id: str = setting(help="VPC id", check=vpc_id)
    subnets: tuple[str, ...] = setting(
        help="subnet ids, in at least two availability zones (the load balancer needs two)",
        item=subnet_id)


@dataclass(frozen=True, kw_only=True)
class StackRole:
    """How many instances of a role run in the stack, where, and what is in front."""

    name: str
    count: int | None = setting(None, help="instances (min = max = desired); default 1 when "
                                           "min/max/desired are not given", check=instances)
    min: int | None = setting(None, help="Auto Scaling group minimum (with max, desired)",
                              check=instances)
    max: int | None = setting(None, help="Auto Scaling group maximum", check=instances)
    desired: int | None = setting(None, help="Auto Scaling group desired capacity "
                                             "(default: min)", check=instances)
    subnets: tuple[str, ...] = setting(
        (), help="subnet ids for this role (existing vpc only; default: the vpc's subnets)",
        item=subnet_id)
    load_balancer: Literal["alb", "none"] = setting(
        "none", help="`alb`: an internet-facing Application Load Balancer in front "
                     "(roles running nginx)")
    tls: Tls | None = setting(None, help="HTTPS on the load balancer (needs load_balancer: alb)")
    elastic_ip: bool = setting(
        False, help="a fixed public address: the role runs as one instance with an Elastic IP "
                    "(a web role without a load balancer)")
    health_check_path: str = setting("/health", help="path the load balancer checks",
                                     check=fc.url_path)
    image_version: Version | None = setting(
        None, help="the published image version this role runs, changed only on purpose "
                   "(needed by a role that keeps its data on the instance store: a new "
                   "image would replace its server); default: stack.image")

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(min, max, desired)."""
        if self.count is not None:
            return self.count, self.count, self.count
        low = self.min if self.min is not None else 1
        high = self.max if self.max is not None else max(low, 1)
        return low, high, self.desired if self.desired is not None else low


@dataclass(frozen=True, kw_only=True)
class Stack:
    """The whole app on AWS: one CloudFormation stack (`amibake stack template`)."""

    name: str = setting("", help="stack name; also the private zone <name>.internal "
                                 "(default: the manifest's name)", check=stack_name)
    vpc: Literal["create"] | ExistingVpc = setting(
        "create", help="`create`: a VPC on `cidr` with a subnet in each of two "
                       "availability zones; or {id, subnets} of an existing VPC")
    cidr: str = setting("10.0.0.0/16", help="address range of a created VPC (/16 to /27), "
                                            "inside app.database.network", check=fc.cidr)
    availability_zones: tuple[str, ...] = setting(
        (), help="the two zones of a created VPC (default: the region's first two)",
        item=availability_zone)
    image: Literal["version", "latest"] = setting(
        "version", help="SSM parameter the launch templates take the AMI from: this manifest's "
                        "version (a new version rolls the fleet) or `latest`")
    ssh_cidr: str = setting("", help="the one address (a /32 or /128) allowed to SSH in; "
                                     "none when empty", check=host_cidr)
    key_name: str = setting("", help="EC2 key pair for SSH (none when empty)",
                            check=fc.optional(key_name))
    roles: dict[str, StackRole] = setting(help="role name → how it runs in the stack")
