"""The manifest's `stack:` section: loaded into the model, refused at its line when wrong."""

from __future__ import annotations

import pytest

from builder.errors import UserError
from builder.manifest import load_manifest_text
from builder.manifest.reference import markdown, sections
from builder.manifest.stack_checks import has_instance_store
from builder.manifest.stack_model import ExistingVpc
from tests.stack_fixtures import CERT, EIP, SPLIT, load, seed_without_stack, with_stack


def test_split_stack_loads() -> None:
    m = load(SPLIT)
    assert m.stack is not None
    assert m.stack.vpc == "create"
    assert m.stack.roles["web"].tls is not None
    assert m.stack.roles["web"].tls.certificate_arn == CERT
    assert m.stack.roles["web"].sizes == (2, 2, 2)
    assert m.stack.roles["app"].sizes == (2, 4, 3)
    assert m.stack.roles["db"].sizes == (1, 1, 1)
    assert m.stack.roles["app"].health_check_path == "/health"


def test_existing_vpc_is_a_mapping_arm_of_the_union() -> None:
    m = load(EIP)
    assert m.stack is not None
    assert isinstance(m.stack.vpc, ExistingVpc)
    assert m.stack.vpc.subnets == ("subnet-0123456789abcdef0", "subnet-0fedcba9876543210")
    assert m.stack.roles["web"].elastic_ip


def test_schema_lists_the_stack_settings() -> None:
    text = markdown(sections())
    assert "## Stack (`stack`)" in text
    assert "`create` or ExistingVpc (mapping)" in text
    assert "## StackRole (`stack.roles.<name>`)" in text


def _problem(section: str, marker: str, base: str | None = None) -> tuple[str, int, int]:
    """The one problem of `section`, and the line of `marker` in the whole text."""
    text = with_stack(section, base)
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "stack.yaml")
    problems = info.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    line = next(i for i, row in enumerate(text.splitlines(), 1) if marker in row)
    p = problems[0]
    assert p.location.file == "stack.yaml"
    assert p.location.col > 1
    assert str(p).startswith(f"stack.yaml:{p.location.line}:{p.location.col}: ")
    return p.message, p.location.line, line


BAD = {
    "db_count_zero": ("stack:\n  roles:\n    web: {count: 1}\n    app: {count: 1}\n"
                      "    db: {count: 0, image_version: 1.0.0}\n", "db: {count: 0",
                      "role 'db' runs postgresql: it is a single instance, so its count "
                      "must be 1 (got 0)"),
    "db_as_fleet": ("stack:\n  roles:\n    web: {count: 1}\n    app: {count: 1}\n"
                    "    db: {min: 1, max: 3, image_version: 1.0.0}\n", "db: {min",
                    "role 'db' runs postgresql: it is a single instance; write count: 1"),
    "db_image_not_pinned": ("stack:\n  roles:\n    web: {count: 1}\n    app: {count: 1}\n"
                            "    db: {count: 1}\n", "db: {count: 1}",
                            "role 'db' keeps its data on the instance store: a new image version "
                            "would replace its server with an empty one; pin the version it runs "
                            "with `image_version: 1.0.0` and change it only on purpose (after a "
                            "backup)"),
    "tls_without_certificate": (
        "stack:\n  roles:\n    web:\n      load_balancer: alb\n      tls: {}\n"
        "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "tls: {}",
        "missing required key 'certificate_arn' in stack.roles.web.tls"),
    "tls_without_load_balancer": (
        f"stack:\n  roles:\n    web:\n      tls: {{certificate_arn: \"{CERT}\"}}\n"
        "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "tls:",
        "tls is served by the load balancer: set load_balancer: alb"),
    "ssh_network": ("stack:\n  ssh_cidr: 198.51.100.0/24\n  roles:\n    web: {count: 1}\n"
                    "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "ssh_cidr",
                    "stack.ssh_cidr: 198.51.100.0/24 is a network of 256 addresses; SSH is "
                    "opened to one address only: write your address as a /32"),
    "ssh_world": ("stack:\n  ssh_cidr: 0.0.0.0/0\n  roles:\n    web: {count: 1}\n"
                  "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "ssh_cidr",
                  "stack.ssh_cidr: 0.0.0.0/0 is a network of 4294967296 addresses; SSH is "
                  "opened to one address only: write your address as a /32"),
    "count_and_range": ("stack:\n  roles:\n    web: {count: 1}\n    app: {count: 2, max: 3}\n"
                        "    db: {count: 1, image_version: 1.0.0}\n", "app: {count",
                        "give either count or max, not both"),
    "min_above_max": ("stack:\n  roles:\n    web: {count: 1}\n    app: {min: 3, max: 2}\n"
                      "    db: {count: 1, image_version: 1.0.0}\n", "app: {min",
                      "min 3 is above max 2"),
    "peer_missing": ("stack:\n  roles:\n    web: {count: 1}\n"
                     "    db: {count: 1, image_version: 1.0.0}\n",
                     "web: {count", "role 'web' proxies to role 'app', which is not in "
                                    "stack.roles"),
    "unknown_role": ("stack:\n  roles:\n    web: {count: 1}\n    app: {count: 1}\n"
                     "    db: {count: 1, image_version: 1.0.0}\n    dbb: {count: 1}\n", "dbb:",
                     "stack role 'dbb' is not a role of this manifest (did you mean 'db'?)"),
    "one_subnet": ("stack:\n  vpc: {id: vpc-0123456789abcdef0, subnets: "
                   "[subnet-0123456789abcdef0]}\n  roles:\n    web: {count: 1}\n"
                   "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "vpc:",
                   "give at least two subnets, in two availability zones (an Application "
                   "Load Balancer needs two)"),
    "vpc_word": ("stack:\n  vpc: make\n  roles:\n    web: {count: 1}\n    app: {count: 1}\n"
                 "    db: {count: 1, image_version: 1.0.0}\n",
                 "vpc: make", "stack.vpc: 'make' is not one of create"),
    "vpc_outside_db_network": ("stack:\n  cidr: 172.16.0.0/16\n  roles:\n    web: {count: 1}\n"
                               "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n",
                               "cidr:",
                               "the vpc 172.16.0.0/16 is not inside app.database.network "
                               "(10.0.0.0/16): the database would refuse the app servers"),
    "vpc_too_big": ("stack:\n  cidr: 10.0.0.0/8\n  roles:\n    web: {count: 1}\n"
                    "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n", "cidr:",
                    "a created vpc's range must be an IPv4 network from /16 to /27 "
                    "(got 10.0.0.0/8)"),
    "eip_behind_alb": ("stack:\n  roles:\n    web: {load_balancer: alb, elastic_ip: true}\n"
                       "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n",
                       "elastic_ip",
                       "a role behind a load balancer takes no Elastic IP (the load balancer "
                       "is its address)"),
    "bad_certificate": ("stack:\n  roles:\n    web:\n      load_balancer: alb\n"
                        "      tls: {certificate_arn: arn:aws:iam::1:server-certificate/x}\n"
                        "    app: {count: 1}\n    db: {count: 1, image_version: 1.0.0}\n",
                        "certificate_arn",
                        "stack.roles.web.tls.certificate_arn: "
                        "'arn:aws:iam::1:server-certificate/x' is not an ACM certificate ARN "
                        "(arn:aws:acm:REGION:ACCOUNT:certificate/UUID)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_stack_refused_at_its_line(case: str) -> None:
    section, marker, expected = BAD[case]
    message, line, marker_line = _problem(section, marker)
    assert message == expected
    assert line == marker_line


def test_db_without_instance_store_refused_at_its_instance_type() -> None:
    base = seed_without_stack().replace(
        "    instance_type: m5d.large   # has an NVMe instance store for /mnt",
        "    instance_type: t3.large")
    message, line, marker_line = _problem(SPLIT, "instance_type: t3.large", base)
    assert line == marker_line
    assert message.startswith("role 'db' runs postgresql with its data on the instance store "
                              "(ephemeral0 at /mnt), but t3.large has no instance store")


@pytest.mark.parametrize("kind,store", [
    ("m5d.large", True), ("c6id.xlarge", True), ("r7gd.medium", True), ("i3.large", True),
    ("i4i.large", True), ("m1.small", True), ("x2idn.16xlarge", True), ("d3.xlarge", True),
    ("t3.small", False), ("m5.large", False), ("c5n.large", False), ("m6a.large", False),
    ("r5b.large", False), ("nonsense", False),
])
def test_instance_store_families(kind: str, store: bool) -> None:
    assert has_instance_store(kind) is store
