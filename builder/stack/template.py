"""Manifest → CloudFormation template: the whole app as one stack.

`template(manifest)` builds the document; `template_yaml(manifest)` writes it
as YAML, the same bytes for the same manifest. What it holds:

- the network: a created VPC on stack.cidr with a public subnet (one half of it)
  in each of two zones (or an existing VPC's subnets);
- a security group per role, opened only to the roles that talk to it
  (load balancer → web on nginx's port, web → app on the app ports through
  the app's internal load balancer, app → db on PostgreSQL's port) and SSH
  from `stack.ssh_cidr` alone;
- per role an instance profile with the role's policy (builder/aws/instance_policy.py:
  its secrets, the db role's backup prefix and data volume), and a launch
  template: the AMI from the SSM parameter `publish` writes, the baked role
  marker (builder.render) as user-data with the peers' private names, IMDSv2
  required;
- an Auto Scaling group for each stateless role, on its launch template's
  default version with the load balancer's health check (a new version is
  rolled out by `stack deploy`'s instance refresh, builder/stack/refresh.py);
  one instance for the db role (its data is on the instance store; its image
  version is pinned, `image_version`) and for a role with an Elastic IP; with
  `storage: ebs` the db role's gp3 data volume (snapshotted when the stack
  deletes or replaces it) in its subnet's zone;
- an internet-facing Application Load Balancer (HTTP → HTTPS with `tls`), an
  internal one in front of the app servers, and a private Route 53 zone
  `<stack>.internal` where roles find each other by name.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import yaml

from builder.aws.instance_policy import (
    POLICY_NAME,
    CloudFormationArns,
    instance_tags,
    role_policy_document,
)
from builder.db_storage.volume import DEVICE, VOLUME_TYPE, ebs_roles, volume_size, volume_tags
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.manifest.stack_checks import single_instance
from builder.manifest.stack_model import ExistingVpc, Stack, StackRole
from builder.publish.step_ssm import ssm_name
from builder.render import render_role

FORMAT_VERSION = "2010-09-09"
SSH_PORT = 22
HTTP_PORT = 80
HTTPS_PORT = 443
#: ALB listener TLS policy: TLS 1.3 and 1.2 only
SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
#: seconds an instance may boot before the load balancer's verdict counts
GRACE_SECONDS = 300
RECORD_TTL = "60"
WORLD = "0.0.0.0/0"


def Ref(name: str) -> dict[str, Any]:  # noqa: N802 - CloudFormation's own name
    return {"Ref": name}


def GetAtt(name: str, attr: str) -> dict[str, Any]:  # noqa: N802
    return {"Fn::GetAtt": [name, attr]}


def logical_id(role: str, suffix: str) -> str:
    """`all-in-one`, `LaunchTemplate` → `AllInOneLaunchTemplate` (CloudFormation ids are
    alphanumeric)."""
    return "".join(part[:1].upper() + part[1:] for part in role.split("-")) + suffix


def stack_name(m: Manifest) -> str:
    return stack_section(m).name or m.name


def zone_name(m: Manifest) -> str:
    return f"{stack_name(m)}.internal"


def private_name(m: Manifest, role: str) -> str:
    return f"{role}.{zone_name(m)}"


@dataclass(frozen=True)
class Link:
    """`client` role connects to `server` role on ports low..high."""

    client: str
    server: str
    low: int
    high: int
    what: str


def links(m: Manifest) -> Iterator[Link]:
    """Who talks to whom inside the stack (the security groups' references and the private
    names each role's user-data carries)."""
    stack = stack_section(m)
    c = m.components
    for name in stack.roles:
        components = m.roles[name].components
        if c.nginx is not None and c.appserver is not None and "nginx" in components:
            up = c.nginx.upstream_role
            if up != name and up in stack.roles:
                ports = c.appserver.ports
                yield Link(name, up, ports[0], ports[-1], "app servers")
        db = m.app.database.host_role
        if c.postgresql is not None and "appserver" in components and db != name \
                and db in stack.roles:
            yield Link(name, db, c.postgresql.port, c.postgresql.port, "PostgreSQL")


def stack_section(m: Manifest) -> Stack:
    if m.stack is None:
        raise UserError(f"{m.source}: the manifest has no `stack:` section",
                        hint="add one (`amibake schema` lists its settings), e.g. "
                             "stack: {roles: {web: {count: 1}, app: {count: 2}, db: {count: 1}}}")
    return m.stack


class _Builder:
    def __init__(self, m: Manifest) -> None:
        self.m = m
        self.stack = stack_section(m)
        self.resources: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.links = list(links(m))

    def add(self, name: str, kind: str, properties: dict[str, Any], **extra: Any) -> str:
        if name in self.resources:
            raise UserError(f"{self.m.source}: two stack resources would be named {name}",
                            hint="rename one of the roles (ids drop the '-')")
        self.resources[name] = {"Type": kind, **extra, "Properties": properties}
        return name

    def tags(self, what: str) -> list[dict[str, str]]:
        return [{"Key": "Name", "Value": f"{stack_name(self.m)}-{what}"}]

    # ------------------------------------------------------------ network

    def network(self) -> tuple[Any, list[Any]]:
        """(VPC id, the two subnets) for every role that names none of its own."""
        vpc = self.stack.vpc
        if isinstance(vpc, ExistingVpc):
            return vpc.id, list(vpc.subnets)
        network = self.stack.cidr
        self.add("Vpc", "AWS::EC2::VPC", {
            "CidrBlock": network, "EnableDnsHostnames": True, "EnableDnsSupport": True,
            "Tags": self.tags("vpc")})
        self.add("InternetGateway", "AWS::EC2::InternetGateway", {"Tags": self.tags("igw")})
        self.add("GatewayAttachment", "AWS::EC2::VPCGatewayAttachment", {
            "VpcId": Ref("Vpc"), "InternetGatewayId": Ref("InternetGateway")})
        self.add("PublicRouteTable", "AWS::EC2::RouteTable", {
            "VpcId": Ref("Vpc"), "Tags": self.tags("public")})
        self.add("PublicRoute", "AWS::EC2::Route", {
            "RouteTableId": Ref("PublicRouteTable"), "DestinationCidrBlock": WORLD,
            "GatewayId": Ref("InternetGateway")}, DependsOn="GatewayAttachment")
        halves = [str(net) for net in ipaddress.ip_network(network).subnets(prefixlen_diff=1)]
        subnets = []
        for index, letter in enumerate("AB"):
            zones = self.stack.availability_zones
            zone = zones[index] if zones else {"Fn::Select": [index, {"Fn::GetAZs": ""}]}
            subnet = self.add(f"Subnet{letter}", "AWS::EC2::Subnet", {
                "VpcId": Ref("Vpc"), "AvailabilityZone": zone,
                "CidrBlock": halves[index],
                "MapPublicIpOnLaunch": True, "Tags": self.tags(f"subnet-{letter.lower()}")})
            self.add(f"Subnet{letter}RouteTableAssociation",
                     "AWS::EC2::SubnetRouteTableAssociation",
                     {"SubnetId": Ref(subnet), "RouteTableId": Ref("PublicRouteTable")})
            subnets.append(Ref(subnet))
        return Ref("Vpc"), subnets

    # ------------------------------------------------------------ security groups

    def security_group(self, name: str, description: str, vpc: Any) -> str:
        return self.add(name, "AWS::EC2::SecurityGroup", {
            "GroupDescription": description, "VpcId": vpc,
            "Tags": self.tags(name.removesuffix("SecurityGroup").lower())})

    def ingress(self, name: str, group: str, low: int, high: int, description: str,
                *, source_group: str | None = None, cidr: str | None = None) -> None:
        rule: dict[str, Any] = {"GroupId": GetAtt(group, "GroupId"), "IpProtocol": "tcp",
                                "FromPort": low, "ToPort": high, "Description": description}
        if source_group is not None:
            rule["SourceSecurityGroupId"] = GetAtt(source_group, "GroupId")
        elif cidr is not None and ":" in cidr:
            rule["CidrIpv6"] = cidr
        else:
            rule["CidrIp"] = cidr
        self.add(name, "AWS::EC2::SecurityGroupIngress", rule)

    # ------------------------------------------------------------ the build

    def build(self) -> dict[str, Any]:
        m, stack = self.m, self.stack
        vpc, subnets = self.network()
        for name in stack.roles:
            self.security_group(logical_id(name, "SecurityGroup"),
                                f"amibake {stack_name(m)}: role {name}", vpc)
        fronted = self.internal_fronts()
        self.rules(vpc)
        for name, sr in stack.roles.items():
            self.instance_profile(name)
            self.launch_template(name, sr)
            role_subnets = list(sr.subnets) or subnets
            targets = self.front_door(name, sr, vpc, role_subnets)
            if name in fronted:
                targets += self.internal_door(name, sr, vpc, role_subnets)
            if single_instance(m, sr):
                self.instance(name, sr, role_subnets[0])
            else:
                self.auto_scaling_group(name, sr, role_subnets, targets)
        self.private_zone(vpc, fronted)
        return {
            "AWSTemplateFormatVersion": FORMAT_VERSION,
            "Description": f"amibake: {m.name} {m.version}, stack {stack_name(m)} "
                           f"(roles {', '.join(stack.roles)})",
            "Resources": self.resources,
            "Outputs": self.outputs,
        }

    def internal_fronts(self) -> list[str]:
        """Roles others reach through an internal load balancer: the Auto Scaling groups
        that are a link's server (their instances come and go; the name stays)."""
        servers = {link.server for link in self.links}
        return [name for name, sr in self.stack.roles.items()
                if name in servers and not single_instance(self.m, sr)]

    def rules(self, vpc: Any) -> None:
        m, stack = self.m, self.stack
        fronted = self.internal_fronts()
        for link in self.links:
            server = logical_id(link.server, "SecurityGroup")
            client = logical_id(link.client, "SecurityGroup")
            if link.server in fronted:
                lb = logical_id(link.server, "InternalLoadBalancerSecurityGroup")
                if lb not in self.resources:
                    self.security_group(lb, f"amibake {stack_name(m)}: internal load balancer "
                                            f"of {link.server}", vpc)
                    self.ingress(logical_id(link.server, "FromInternalLoadBalancer"), server,
                                 link.low, link.high, f"{link.what} from their load balancer",
                                 source_group=lb)
                server = lb
            self.ingress(logical_id(link.server, "From" + logical_id(link.client, "")), server,
                         link.low, link.high, f"{link.what} from role {link.client}",
                         source_group=client)
        nginx = m.components.nginx
        for name, sr in stack.roles.items():
            group = logical_id(name, "SecurityGroup")
            if nginx is not None and "nginx" in m.roles[name].components:
                if sr.load_balancer == "alb":
                    lb = logical_id(name, "LoadBalancerSecurityGroup")
                    self.security_group(lb, f"amibake {stack_name(m)}: load balancer of {name}",
                                        vpc)
                    ports = [HTTP_PORT] + ([HTTPS_PORT] if sr.tls else [])
                    for port in ports:
                        self.ingress(logical_id(name, f"LoadBalancerFromWorld{port}"), lb,
                                     port, port, f"the site on port {port}", cidr=WORLD)
                    self.ingress(logical_id(name, "FromLoadBalancer"), group, nginx.listen,
                                 nginx.listen, "nginx from the load balancer", source_group=lb)
                else:
                    self.ingress(logical_id(name, "FromWorld"), group, nginx.listen,
                                 nginx.listen, "the site (nginx)", cidr=WORLD)
            for i, port in enumerate(m.roles[name].ports):
                self.ingress(logical_id(name, f"ExtraPort{i}"), group, port, port,
                             f"roles.{name}.ports from the VPC", cidr=self.vpc_cidr())
            if stack.ssh_cidr:
                self.ingress(logical_id(name, "Ssh"), group, SSH_PORT, SSH_PORT,
                             "SSH from stack.ssh_cidr", cidr=stack.ssh_cidr)

    def vpc_cidr(self) -> str:
        """The created VPC's range; for an existing VPC, the network the app connects from."""
        if isinstance(self.stack.vpc, ExistingVpc):
            return self.m.app.database.network
        return self.stack.cidr

    def instance_profile(self, name: str) -> None:
        role = logical_id(name, "InstanceRole")
        props: dict[str, Any] = {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                               "Action": "sts:AssumeRole"}]},
            "Tags": self.tags(f"{name}-instance"),
        }
        document = role_policy_document(self.m, name, CloudFormationArns())
        if document is not None:
            props["Policies"] = [{"PolicyName": POLICY_NAME, "PolicyDocument": document}]
        self.add(role, "AWS::IAM::Role", props)
        self.add(logical_id(name, "InstanceProfile"), "AWS::IAM::InstanceProfile",
                 {"Roles": [Ref(role)]})

    def user_data(self, name: str, sr: StackRole) -> str:
        hosts = {link.server: [private_name(self.m, link.server)]
                 for link in self.links if link.client == name}
        # a pinned role's marker names its own version: a new manifest version leaves its
        # launch template as it was
        m = self.m if sr.image_version is None else replace(self.m, version=sr.image_version)
        rendered = render_role(m, name, baked=True, hosts=hosts)
        return base64.b64encode(rendered.user_data).decode("ascii")

    def image_id(self, sr: StackRole) -> str:
        """The role's pinned version, else the manifest's version or `latest`."""
        if sr.image_version is not None:
            leaf = str(sr.image_version)
        else:
            leaf = str(self.m.version) if self.stack.image == "version" else "latest"
        name = ssm_name(self.m.publish.ssm_prefix, self.m.name, leaf)
        return "{{resolve:ssm:" + name + "}}"

    def launch_template(self, name: str, sr: StackRole) -> None:
        role = self.m.roles[name]
        data: dict[str, Any] = {
            "ImageId": self.image_id(sr),
            "InstanceType": role.instance_type,
            "IamInstanceProfile": {"Arn": GetAtt(logical_id(name, "InstanceProfile"), "Arn")},
            "SecurityGroupIds": [GetAtt(logical_id(name, "SecurityGroup"), "GroupId")],
            "UserData": self.user_data(name, sr),
            "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                "HttpPutResponseHopLimit": 1, "InstanceMetadataTags": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": [
                *self.tags(name), {"Key": "Role", "Value": name},
                *({"Key": k, "Value": v} for k, v in instance_tags(self.m, name).items())]}],
        }
        pg = self.m.components.postgresql
        if pg is not None and "postgresql" in role.components and name not in ebs_roles(self.m):
            data["BlockDeviceMappings"] = [{"DeviceName": "/dev/sdb",
                                            "VirtualName": pg.instance_store}]
        if self.stack.key_name:
            data["KeyName"] = self.stack.key_name
        self.add(logical_id(name, "LaunchTemplate"), "AWS::EC2::LaunchTemplate", {
            "LaunchTemplateName": {"Fn::Sub": f"${{AWS::StackName}}-{name}"},
            "LaunchTemplateData": data})

    def _template_ref(self, name: str, version: str = "LatestVersionNumber") -> dict[str, Any]:
        lt = logical_id(name, "LaunchTemplate")
        return {"LaunchTemplateId": Ref(lt), "Version": GetAtt(lt, version)}

    def instance(self, name: str, sr: StackRole, subnet: Any) -> None:
        instance = logical_id(name, "Instance")
        extra: dict[str, Any] = {}
        if "postgresql" in self.m.roles[name].components:
            # a new image never terminates the database server with its data
            extra["UpdateReplacePolicy"] = "Retain"
            extra["DeletionPolicy"] = "Delete"
        if name in ebs_roles(self.m) and self.data_volume(name, instance, subnet):
            extra["DependsOn"] = logical_id(name, "DataVolume")  # there before the boot
        self.add(instance, "AWS::EC2::Instance", {
            "LaunchTemplate": self._template_ref(name), "SubnetId": subnet}, **extra)
        if sr.elastic_ip:
            eip = logical_id(name, "ElasticIp")
            depends = {"DependsOn": "GatewayAttachment"} if "GatewayAttachment" in \
                self.resources else {}
            self.add(eip, "AWS::EC2::EIP", {"Domain": "vpc", "InstanceId": Ref(instance),
                                            "Tags": self.tags(f"{name}-address")}, **depends)
            self.outputs["SiteAddress"] = {
                "Description": "the site's address (cutover.dns.new_address): an Elastic IP",
                "Value": Ref(eip)}

    def data_volume(self, name: str, instance: str, subnet: Any) -> bool:
        """The db role's persistent volume, found at boot by its tags
        (cloudinit/boot/amibake-ebs-attach); True when the instance can wait for it."""
        if isinstance(subnet, dict) and "Ref" in subnet:  # a subnet of this stack
            zone, depends = GetAtt(subnet["Ref"], "AvailabilityZone"), True
        else:  # an existing subnet's id: its zone is the instance's
            zone, depends = GetAtt(instance, "AvailabilityZone"), False
        tags = [*self.tags(f"{name}-data"),
                *({"Key": k, "Value": v} for k, v in volume_tags(self.m, name).items())]
        volume = self.add(logical_id(name, "DataVolume"), "AWS::EC2::Volume", {
            "AvailabilityZone": zone, "Size": volume_size(self.m), "VolumeType": VOLUME_TYPE,
            "Encrypted": True, "Tags": tags},
            DeletionPolicy="Snapshot", UpdateReplacePolicy="Snapshot")
        self.outputs[logical_id(name, "DataVolume")] = {
            "Description": f"role {name}'s data volume (attached as {DEVICE} at boot)",
            "Value": Ref(volume)}
        return depends

    def auto_scaling_group(self, name: str, sr: StackRole, subnets: list[Any],
                           targets: list[dict[str, Any]]) -> None:
        low, high, desired = sr.sizes
        props: dict[str, Any] = {
            # the default version: a new version is rolled out by `stack deploy`'s instance
            # refresh (health-checked, rolled back on failure; builder/stack/refresh.py),
            # which makes it the default once it has succeeded
            "LaunchTemplate": self._template_ref(name, "DefaultVersionNumber"),
            "MinSize": str(low), "MaxSize": str(high), "DesiredCapacity": str(desired),
            "VPCZoneIdentifier": subnets,
            "HealthCheckType": "ELB" if targets else "EC2",
            "HealthCheckGracePeriod": GRACE_SECONDS,
            "Tags": [{"Key": "Name", "Value": f"{stack_name(self.m)}-{name}",
                      "PropagateAtLaunch": True}],
        }
        if targets:
            props["TargetGroupARNs"] = targets
        self.add(logical_id(name, "AutoScalingGroup"), "AWS::AutoScaling::AutoScalingGroup",
                 props)

    def _target_group(self, name: str, port: int, vpc: Any, path: str) -> str:
        return self.add(name, "AWS::ElasticLoadBalancingV2::TargetGroup", {
            "Port": port, "Protocol": "HTTP", "VpcId": vpc, "TargetType": "instance",
            "HealthCheckProtocol": "HTTP", "HealthCheckPath": path,
            "Matcher": {"HttpCode": "200"}, "Tags": self.tags(name.lower())})

    def front_door(self, name: str, sr: StackRole, vpc: Any,
                   subnets: list[Any]) -> list[dict[str, Any]]:
        """The internet-facing ALB of a web role; its target groups."""
        nginx = self.m.components.nginx
        if sr.load_balancer != "alb" or nginx is None:
            return []
        lb = self.add(logical_id(name, "LoadBalancer"),
                      "AWS::ElasticLoadBalancingV2::LoadBalancer", {
                          "Type": "application", "Scheme": "internet-facing",
                          "Subnets": subnets, "Tags": self.tags(f"{name}-alb"),
                          "SecurityGroups": [GetAtt(logical_id(name, "LoadBalancerSecurityGroup"),
                                                    "GroupId")]})
        tg = self._target_group(logical_id(name, "TargetGroup"), nginx.listen, vpc,
                                sr.health_check_path)
        forward = [{"Type": "forward", "TargetGroupArn": Ref(tg)}]
        http_action = forward
        if sr.tls is not None:
            http_action = [{"Type": "redirect", "RedirectConfig": {
                "Protocol": "HTTPS", "Port": str(HTTPS_PORT), "StatusCode": "HTTP_301"}}]
            self.add(logical_id(name, "HttpsListener"), "AWS::ElasticLoadBalancingV2::Listener", {
                "LoadBalancerArn": Ref(lb), "Port": HTTPS_PORT, "Protocol": "HTTPS",
                "SslPolicy": SSL_POLICY,
                "Certificates": [{"CertificateArn": sr.tls.certificate_arn}],
                "DefaultActions": forward})
        self.add(logical_id(name, "HttpListener"), "AWS::ElasticLoadBalancingV2::Listener", {
            "LoadBalancerArn": Ref(lb), "Port": HTTP_PORT, "Protocol": "HTTP",
            "DefaultActions": http_action})
        self.outputs["SiteAddress"] = {
            "Description": "the site's address (cutover.dns.new_address): the load "
                           "balancer's DNS name; the cutover makes the site's record a CNAME "
                           "to it",
            "Value": GetAtt(lb, "DNSName")}
        return [Ref(tg)]

    def internal_door(self, name: str, sr: StackRole, vpc: Any,
                      subnets: list[Any]) -> list[dict[str, Any]]:
        """The internal ALB others reach `name` through, one listener per served port."""
        lb = self.add(logical_id(name, "InternalLoadBalancer"),
                      "AWS::ElasticLoadBalancingV2::LoadBalancer", {
                          "Type": "application", "Scheme": "internal", "Subnets": subnets,
                          "Tags": self.tags(f"{name}-internal"),
                          "SecurityGroups": [GetAtt(
                              logical_id(name, "InternalLoadBalancerSecurityGroup"),
                              "GroupId")]})
        ports = sorted({port for link in self.links if link.server == name
                        for port in range(link.low, link.high + 1)})
        targets = []
        for port in ports:
            tg = self._target_group(logical_id(name, f"TargetGroup{port}"), port, vpc,
                                    sr.health_check_path)
            self.add(logical_id(name, f"Listener{port}"), "AWS::ElasticLoadBalancingV2::Listener",
                     {"LoadBalancerArn": Ref(lb), "Port": port, "Protocol": "HTTP",
                      "DefaultActions": [{"Type": "forward", "TargetGroupArn": Ref(tg)}]})
            targets.append(Ref(tg))
        return targets

    def private_zone(self, vpc: Any, fronted: list[str]) -> None:
        servers = sorted({link.server for link in self.links})
        if not servers:
            return
        self.add("PrivateZone", "AWS::Route53::HostedZone", {
            "Name": zone_name(self.m),
            "VPCs": [{"VPCId": vpc, "VPCRegion": Ref("AWS::Region")}],
            "HostedZoneConfig": {"Comment": f"amibake {stack_name(self.m)}: roles by name"}})
        for name in servers:
            record: dict[str, Any] = {"HostedZoneId": Ref("PrivateZone"),
                                      "Name": private_name(self.m, name) + ".", "Type": "A"}
            if name in fronted:
                lb = logical_id(name, "InternalLoadBalancer")
                record["AliasTarget"] = {"DNSName": GetAtt(lb, "DNSName"),
                                         "HostedZoneId": GetAtt(lb, "CanonicalHostedZoneID")}
            else:
                record["TTL"] = RECORD_TTL
                record["ResourceRecords"] = [GetAtt(logical_id(name, "Instance"), "PrivateIp")]
            self.add(logical_id(name, "Record"), "AWS::Route53::RecordSet", record)
            self.outputs[logical_id(name, "PrivateName")] = {
                "Description": f"where other roles reach role {name}",
                "Value": private_name(self.m, name)}


def template(m: Manifest) -> dict[str, Any]:
    """The CloudFormation template of the manifest's `stack:` section."""
    return _Builder(m).build()


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the same list twice is written twice, never as an anchor


def template_yaml(m: Manifest, built: dict[str, Any] | None = None) -> str:
    """The template (`built`, or built now) as YAML: deterministic (insertion order, no
    anchors, no dates)."""
    header = f"# CloudFormation template of {m.source.name} ({m.name} {m.version}), by amibake\n"
    return header + yaml.dump(built or template(m), Dumper=_Dumper, sort_keys=False,
                              default_flow_style=False, width=100, allow_unicode=False)
