"""`amibake launch --target local|aws ROLE`: start an instance of an image in a role."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.output import Output

DEFAULT_MANIFEST_DIR = Path("manifests")


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "launch", parents=[parent],
        help=VERBS["launch"],
        description="Start an instance in ROLE. `--target local` boots the image from the "
        "local store under qemu, in the background, with amibake's metadata service "
        "(a tiny local EC2); `amibake instances list|stop` manage it.",
    )
    p.add_argument("role", metavar="ROLE", nargs="?",
                   help="the role the instance takes at boot (not with --stack)")
    p.add_argument("--target", choices=("local", "aws"), default="local",
                   help="where to launch (default: local)")
    p.add_argument("--version", dest="image_version", metavar="V",
                   help="image version (default: the newest stored / published)")
    p.add_argument("--manifest", type=Path, metavar="PATH",
                   help="the manifest (default: the only one in manifests/, "
                   "or manifests/smallpayroll.yaml)")
    p.add_argument("--store", type=Path, metavar="DIR",
                   help="local image store (default: $AMIBAKE_STORE or ./images)")
    p.add_argument("--boot", choices=("uefi", "bios"), default="uefi",
                   help="firmware for a local VM (default: uefi)")
    p.add_argument("--stack", type=Path, metavar="MANIFEST",
                   help="--target local: every role of MANIFEST's stack: section as its own VM "
                        "on one private network, finding each other by the stack's names")
    p.add_argument("--stop", action="store_true",
                   help="with --stack: stop the local stack's VMs and its DNS")
    p.add_argument("--replace", metavar="ROLE",
                   help="with --stack: stop ROLE's VM and boot another in its place")
    aws = p.add_argument_group("--target aws")
    aws.add_argument("--ssh-cidr", metavar="IP/32",
                     help="your public address: SSH is opened to it only")
    aws.add_argument("--key-name", help="EC2 key pair name (default: amibake-NAME)")
    aws.add_argument("--public-key", type=Path, metavar="FILE",
                     help="import this public key instead of creating a key pair")
    aws.add_argument("--instance-type", help="override the role's instance type")
    aws.add_argument("--instance-profile", metavar="NAME",
                     help="attach this existing instance profile instead of making or reusing "
                          "amibake-NAME-ROLE (its policy: amibake iam-policy --role ROLE MANIFEST)")
    aws.add_argument("--key-dir", type=Path, default=Path.home() / ".ssh", metavar="DIR",
                     help="where a created key pair's private key is written (default: ~/.ssh)")
    from builder.aws.clients import add_aws_options
    add_aws_options(p)
    p.set_defaults(func=run)


def default_manifest(directory: Path = DEFAULT_MANIFEST_DIR) -> Path:
    """The manifest to use when --manifest is not given."""
    preferred = directory / "smallpayroll.yaml"
    found = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if preferred.is_file():
        return preferred
    raise UserError("no manifest given and none found in manifests/",
                    hint="pass --manifest PATH")


def run(args: argparse.Namespace, out: Output) -> int:
    from builder.manifest import load_manifest

    if args.stack is not None:
        if args.target != "local" or args.role or args.manifest:
            raise UserError("--stack MANIFEST boots every stack role locally: give no ROLE, "
                            "no --manifest and no --target aws")
        return _stack_local(args, load_manifest(args.stack), out)
    if args.stop or args.replace:
        raise UserError("--stop and --replace go with --stack MANIFEST")
    manifest = load_manifest(args.manifest or default_manifest())
    if args.role is None:
        raise UserError("name the ROLE to launch (or --stack MANIFEST)")
    if args.role not in manifest.roles:
        raise UserError(f"unknown role {args.role!r}",
                        hint=f"roles in {manifest.source}: {', '.join(manifest.roles)}")
    if args.target == "aws":
        return _launch_aws(args, manifest, out)
    return _launch_local(args, manifest, out)


def _launch_local(args: argparse.Namespace, manifest: Any, out: Output) -> int:
    from builder.store import Store, default_store_root
    from builder.vm.launch import launch_local

    image = Store(args.store or default_store_root()).get(manifest.name, args.image_version)
    label = f"{image.name} {image.version} ({image.id})"
    out.say(f"booting {label} as {args.role} under qemu ...")
    inst = launch_local(image, manifest, args.role, boot=args.boot, image_label=label)
    text = "\n".join([
        f"instance {inst.instance_id} ({inst.role}) is booting from {inst.image}",
        f"  ssh:    {inst.ssh_command()}",
        f"  http:   http://127.0.0.1:{inst.http_port}/",
        f"  serial: {inst.serial_log}",
        f"  stop:   amibake instances stop {inst.instance_id}",
    ])
    out.result(inst.as_json(), text)
    return 0


def _stack_local(args: argparse.Namespace, manifest: Any, out: Output) -> int:
    from builder.stack.template import stack_name
    from builder.store import Store, default_store_root
    from builder.vm.stack_launch import launch_stack, load_state, replace_role, stop_stack

    name = stack_name(manifest)
    if args.stop:
        stopped = stop_stack(name)
        out.result({"stack": name, "stopped": stopped},
                   f"local stack {name} stopped ({len(stopped)} VMs)")
        return 0
    image = Store(args.store or default_store_root()).get(manifest.name, args.image_version)
    label = f"{image.name} {image.version} ({image.id})"
    if args.replace:
        out.say(f"replacing {args.replace} of local stack {name} ...")
        replace_role(name, image, manifest, args.replace, boot=args.boot, image_label=label)
    else:
        out.say(f"booting local stack {name} from {label} under qemu ...")
        launch_stack(image, manifest, boot=args.boot, image_label=label)
    state = load_state(name)
    from builder.vm.launch import list_instances

    running = {i.instance_id: i for i in list_instances()}
    members = {role: {**member, "name": f"{role}.{state.zone}",
                      **(running[member["instance_id"]].as_json()
                         if member["instance_id"] in running else {})}
               for role, member in state.members.items()}
    lines = [f"local stack {name} (network {state.network}, names *.{state.zone}):"]
    for role, member in members.items():
        lines.append(f"  {role:<6} {member['instance_id']} {member['address']:<15} "
                     f"http://127.0.0.1:{member.get('http_port', '?')}/")
    lines.append(f"  stop: amibake launch --target local --stack {args.stack} --stop")
    out.result({"stack": name, "network": state.network, "zone": state.zone,
                "members": members}, "\n".join(lines))
    return 0


def _launch_aws(args: argparse.Namespace, manifest: Any, out: Output) -> int:
    try:
        from builder.aws.launch import launch_aws
    except ImportError as exc:
        raise UserError("--target aws is not available in this build "
                        "(builder.aws.launch is missing)",
                        hint="use --target local") from exc
    from builder.aws.clients import (
        NO_CREDENTIALS_HINT,
        make_clients,
        target_from_args,
    )

    clients = make_clients(target_from_args(args, manifest.publish.regions[0]))
    if clients is None:
        raise UserError("no AWS credentials configured: nothing was launched",
                        hint=NO_CREDENTIALS_HINT)
    out.say(f"launching {manifest.name} as {args.role} in {clients.home_region} ...")
    result = launch_aws(clients, manifest, args.role, ssh_cidr=args.ssh_cidr,
                        version=args.image_version, key_name=args.key_name,
                        public_key=args.public_key, instance_type=args.instance_type,
                        key_dir=args.key_dir, instance_profile=args.instance_profile)
    out.result(result.as_json(), "\n".join([
        f"instance {result.instance_id} ({result.role}) is running from {result.image_id} "
        f"in {result.region}",
        f"  ssh:   {result.ssh_command}",
        f"  hosts: {result.hosts_line}",
        *([f"  instance profile: {result.instance_profile}"] if result.instance_profile else []),
        *([f"  data volume: {result.data_volume}"] if result.data_volume else []),
    ]))
    return 0
