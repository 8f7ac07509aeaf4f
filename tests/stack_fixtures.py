"""Manifests with a `stack:` section for the stack tests: the seed manifest with its own
stack section (if any) replaced by the one a test gives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from builder.manifest import Manifest, load_manifest_text

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"
CERT = "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"

#: the seed's roles split across the stack: ALB with TLS, an app fleet, one db
SPLIT = f"""\
stack:
  ssh_cidr: 198.51.100.7/32
  roles:
    web:
      count: 2
      load_balancer: alb
      tls: {{certificate_arn: "{CERT}"}}
    app: {{min: 2, max: 4, desired: 3}}
    db: {{count: 1, image_version: 1.0.0}}
"""

#: one web server with an Elastic IP in an existing VPC, no TLS
EIP = """\
stack:
  name: payroll-eip
  vpc:
    id: vpc-0123456789abcdef0
    subnets: [subnet-0123456789abcdef0, subnet-0fedcba9876543210]
  image: latest
  key_name: payroll-admin
  roles:
    web: {elastic_ip: true}
    app: {count: 1}
    db: {count: 1, image_version: 1.0.0}
"""

_STACK_SECTION = re.compile(r"^stack:.*?(?=^\S|\Z)", re.S | re.M)


def seed_without_stack(text: str | None = None) -> str:
    text = SEED.read_text() if text is None else text
    return _STACK_SECTION.sub("", text).rstrip("\n") + "\n"


def with_stack(section: str, base: str | None = None) -> str:
    return seed_without_stack(base) + section


def load(section: str, name: str = "stack.yaml", base: str | None = None) -> Manifest:
    return load_manifest_text(with_stack(section, base), name)


def as_cloudformation_resolves(body: str, ssm: Any) -> str:
    """What CloudFormation does and moto does not: resolve `{{resolve:ssm:NAME}}`, and
    start an AWS::EC2::Instance from its launch template (moto's Instance needs ImageId)."""
    body = re.sub(r"\{\{resolve:ssm:([^}]+)\}\}",
                  lambda m: ssm.get_parameter(Name=m[1])["Parameter"]["Value"], body)
    doc = yaml.safe_load(body)
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::EC2::Instance":
            lt = resource["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]
            data = doc["Resources"][lt]["Properties"]["LaunchTemplateData"]
            resource["Properties"].update(ImageId=data["ImageId"],
                                          InstanceType=data["InstanceType"],
                                          UserData=data["UserData"])
    return yaml.safe_dump(doc)


def published(session: Any, m: Manifest) -> str:
    """An AMI and the SSM parameter `publish` writes for it."""
    ec2, ssm = session.client("ec2"), session.client("ssm")
    image = ec2.register_image(Name=f"{m.name}-{m.version}", RootDeviceName="/dev/xvda",
                               Architecture="x86_64")["ImageId"]
    ssm.put_parameter(Name=f"/amibake/{m.name}/{m.version}", Value=image, Type="String",
                      DataType="aws:ec2:image")
    return image
