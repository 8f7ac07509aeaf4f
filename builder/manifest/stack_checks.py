"""Checks of the `stack:` section across settings, and of instance storage.

Run with the rest at load (checks.py CHECKS), each problem at its line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from builder.manifest.model import Manifest
from builder.manifest.scalars import did_you_mean
from builder.manifest.stack_model import ExistingVpc, StackRole

Report = Callable[[str, str], None]

#: Families whose instances carry an instance store although their name has no
#: `d` (the newer rule: m5d, c6id, r7gd, x2idn … do have one).
INSTANCE_STORE_FAMILIES = frozenset({
    "m1", "m2", "m3", "c1", "c3", "cc2", "cr1", "hs1", "r3", "i2", "i3", "i3en", "i4i", "i4g",
    "im4gn", "is4gen", "d2", "d3", "d3en", "h1", "x1", "x1e", "f1",
})
_FAMILY = re.compile(r"(?P<family>(?P<letters>[a-z]+)(?P<gen>[0-9]+)(?P<suffix>[a-z-]*))\.",
                     re.ASCII)
#: A created VPC holds two subnets of half its size: /16 (AWS's largest) to /27.
VPC_PREFIXES = range(16, 28)


def has_instance_store(instance_type: str) -> bool:
    """True when EC2 gives `instance_type` a local instance store."""
    m = _FAMILY.match(instance_type)
    if m is None:
        return False
    return m["family"] in INSTANCE_STORE_FAMILIES or "d" in m["suffix"]


def check_instance_storage(m: Manifest, report: Report) -> None:
    """PostgreSQL keeps its data on the instance store: a stack's db role needs one.
    (Only for roles the stack starts: `launch` and the boot tests take any type.)"""
    pg = m.components.postgresql
    if pg is None or m.stack is None or pg.storage == "ebs":
        return
    for name in m.stack.roles:
        role = m.roles.get(name)
        if role is not None and "postgresql" in role.components \
                and not has_instance_store(role.instance_type):
            report(f"roles.{name}.instance_type",
                   f"role {name!r} runs postgresql with its data on the instance store "
                   f"({pg.instance_store} at {pg.mount_point}), but {role.instance_type} has "
                   "no instance store; pick a type that has one, such as m5d.large, c5d.large, "
                   "r5d.large or i3.large")


def check_stack(m: Manifest, report: Report) -> None:
    stack = m.stack
    if stack is None:
        return
    if not stack.roles:
        report("stack.roles", "the stack runs no role; name at least one role under "
                              "stack.roles (e.g. `web: {count: 2}`)")
    for name, sr in stack.roles.items():
        path = f"stack.roles.{name}"
        if name not in m.roles:
            report(path, f"stack role {name!r} is not a role of this manifest"
                         + (did_you_mean(name, tuple(m.roles)) or
                            f" (roles: {', '.join(m.roles)})"))
            continue
        _check_sizes(m, sr, path, report)
        _check_pinned(m, sr, path, report)
        _check_front(m, sr, path, report)
        if sr.subnets and not isinstance(stack.vpc, ExistingVpc):
            report(f"{path}.subnets", "subnets are chosen only in an existing vpc; a created "
                                      "vpc puts every role in its two subnets")
    _check_peers(m, report)
    _check_vpc(m, report)


def _check_sizes(m: Manifest, sr: StackRole, path: str, report: Report) -> None:
    ranged = [k for k in ("min", "max", "desired") if getattr(sr, k) is not None]
    if sr.count is not None and ranged:
        report(f"{path}.{ranged[0]}", f"give either count or {'/'.join(ranged)}, not both")
        return
    if single_instance(m, sr):
        why = "runs postgresql" if "postgresql" in m.roles[sr.name].components \
            else "has an elastic_ip"
        if ranged:
            report(f"{path}.{ranged[0]}", f"role {sr.name!r} {why}: it is a single instance; "
                                          "write count: 1")
        elif sr.count is not None and sr.count != 1:
            report(f"{path}.count", f"role {sr.name!r} {why}: it is a single instance, so its "
                                    f"count must be 1 (got {sr.count})")
        return
    low, high, desired = sr.sizes
    if high < 1:
        report(f"{path}.{'count' if sr.count is not None else 'max'}",
               f"role {sr.name!r} would run no instance; remove it from stack.roles instead")
    elif low > high:
        report(f"{path}.min", f"min {low} is above max {high}")
    elif not low <= desired <= high:
        report(f"{path}.desired", f"desired {desired} is outside min {low} .. max {high}")


def _check_pinned(m: Manifest, sr: StackRole, path: str, report: Report) -> None:
    """A server whose data lives on the instance store must not follow every new image:
    replacing it would start an empty one."""
    pg = m.components.postgresql
    if pg is not None and pg.storage == "instance-store" and sr.image_version is None \
            and "postgresql" in m.roles[sr.name].components:
        report(path, f"role {sr.name!r} keeps its data on the instance store: a new image "
                     "version would replace its server with an empty one; pin the version it "
                     f"runs with `image_version: {m.version}` and change it only on purpose "
                     "(after a backup)")


def single_instance(m: Manifest, sr: StackRole) -> bool:
    """The db role (its data is on the instance store) and a role with an Elastic IP run as
    one EC2 instance, not an Auto Scaling group."""
    return "postgresql" in m.roles[sr.name].components or sr.elastic_ip


def _check_front(m: Manifest, sr: StackRole, path: str, report: Report) -> None:
    components = m.roles[sr.name].components
    if sr.load_balancer == "alb" and "nginx" not in components:
        report(f"{path}.load_balancer", f"role {sr.name!r} runs no nginx; the load balancer "
                                        "goes in front of the web role")
    if sr.tls is not None and sr.load_balancer != "alb":
        report(f"{path}.tls", "tls is served by the load balancer: set load_balancer: alb")
    if sr.elastic_ip and sr.load_balancer != "none":
        report(f"{path}.elastic_ip", "a role behind a load balancer takes no Elastic IP (the "
                                     "load balancer is its address)")
    if sr.elastic_ip and "nginx" not in components:
        report(f"{path}.elastic_ip", f"role {sr.name!r} runs no nginx; the Elastic IP is the "
                                     "site's address on the web role")


def _check_peers(m: Manifest, report: Report) -> None:
    """A role in the stack must find the roles it talks to in the stack too."""
    stack = m.stack
    assert stack is not None
    nginx, db_role = m.components.nginx, m.app.database.host_role
    for name in stack.roles:
        if name not in m.roles:
            continue
        components = m.roles[name].components
        needs = []
        if nginx is not None and "nginx" in components and "appserver" not in components:
            needs.append((nginx.upstream_role, "proxies to"))
        if "appserver" in components and "postgresql" not in components:
            needs.append((db_role, "keeps its data in"))
        for peer, verb in needs:
            if peer not in stack.roles:
                report(f"stack.roles.{name}", f"role {name!r} {verb} role {peer!r}, which is "
                                              "not in stack.roles")


def _check_vpc(m: Manifest, report: Report) -> None:
    stack = m.stack
    assert stack is not None
    if isinstance(stack.vpc, ExistingVpc):
        if stack.availability_zones:
            report("stack.availability_zones", "availability zones are chosen for a created "
                                               "vpc only; an existing vpc's subnets set them")
        if len(set(stack.vpc.subnets)) < 2:
            report("stack.vpc.subnets", "give at least two subnets, in two availability zones "
                                        "(an Application Load Balancer needs two)")
        return
    if stack.availability_zones and len(set(stack.availability_zones)) != 2:
        report("stack.availability_zones", "a created vpc spans two availability zones: "
                                           "name two different ones, or none for the region's "
                                           "first two")
    vpc = ipaddress.ip_network(stack.cidr)
    if vpc.version != 4 or vpc.prefixlen not in VPC_PREFIXES:
        report("stack.cidr", f"a created vpc's range must be an IPv4 network from /16 to "
                             f"/{VPC_PREFIXES[-1]} (got {vpc})")
        return
    network = ipaddress.ip_network(m.app.database.network)
    if network.version != 4 or not vpc.subnet_of(network):
        report("stack.cidr", f"the vpc {vpc} is not inside app.database.network ({network}): "
                             "the database would refuse the app servers")
