"""A local stack: the manifest's `stack:` roles as separate VMs, wired as on AWS.

Each role is one VM (builder/vm/launch.py, its own supervisor and IMDS emulator) with a
second NIC on one private qemu network (a multicast socket on loopback) at an address of
`stack.cidr`, the same network the CloudFormation template creates. Roles find each other
by the template's names, `<role>.<stack>.internal`: a Knot server on 127.0.0.1
(builder/vm/stack_dns.py) answers them, as the private zone does; the web role's nginx
asks it through the user network's gateway, and the VMs' /etc/hosts name the db (the app's
PostgreSQL client resolves with the system resolver). Replacing a role's VM gives it a new
address and moves its name: nobody else is touched.

State: <state root>/stack-<name>/stack.json (0600, holds the stack's shared secrets) and
the Knot files beside it.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.atomic import write_atomically
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.vm.launch import ImageLike, LocalInstance, launch_local, state_root, stop_instance
from builder.vm.qemu import GUEST_GATEWAY, private_mac_for
from builder.vm.stack_dns import StackDns, start_dns

MCAST_GROUP = "230.0.74.1"
#: the first host number of stack.cidr given to a VM (AWS keeps the first few too)
FIRST_HOST = 10


@dataclass
class StackState:
    name: str
    zone: str
    network: str
    mcast: str
    dns_port: int
    dns_secret: str
    secrets: dict[str, str]
    next_host: int = FIRST_HOST
    #: role → {"instance_id", "address"}
    members: dict[str, dict[str, str]] = field(default_factory=dict)


def stack_dir(name: str, root: Path | None = None) -> Path:
    return (root or state_root()) / f"stack-{name}"


def _save(state: StackState, root: Path | None) -> None:
    write_atomically(stack_dir(state.name, root) / "stack.json",
                     json.dumps(asdict(state), indent=2), mode=0o600)


def load_state(name: str, root: Path | None = None) -> StackState:
    path = stack_dir(name, root) / "stack.json"
    try:
        return StackState(**json.loads(path.read_text()))
    except OSError:
        raise UserError(f"no local stack {name}",
                        hint="start one: amibake launch --target local --stack MANIFEST") from None


def _dns(state: StackState, root: Path | None) -> StackDns:
    return StackDns(stack_dir(state.name, root) / "dns", state.zone, state.dns_port,
                    state.dns_secret)


def boot_order(m: Manifest) -> list[str]:
    """Servers before their clients (db, app, web): each name resolves when asked."""
    from builder.stack.template import links

    roles = list(_stack(m).roles)
    clients = {link.client for link in links(m)}
    servers = {link.server for link in links(m)}
    return sorted(roles, key=lambda r: (r in clients, r not in servers, roles.index(r)))


def _stack(m: Manifest) -> Any:
    from builder.stack.template import stack_section

    return stack_section(m)


def stack_user_data(m: Manifest, role: str, state: StackState, address: str,
                    instance_id: str) -> bytes:
    """The role's baked marker with the peers' private names (as the template's launch
    template has it), plus the local network: the private NIC's address, the db's name in
    /etc/hosts, and nginx's resolver (the stack's Knot through the gateway)."""
    from builder.render import render_role
    from builder.stack.template import links, private_name
    from builder.vm.metadata import LOCAL_SECRETS_ENDPOINT

    peers = {link.server for link in links(m) if link.client == role}
    hosts = {peer: [private_name(m, peer)] for peer in peers}
    text = render_role(m, role, baked=True, hosts=hosts,
                       markers={"secrets-endpoint": LOCAL_SECRETS_ENDPOINT}).user_data.decode()
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.startswith("    AMIBAKE_HOSTS_")),
               default=None)
    if last is not None:
        lines.insert(last + 1, f'    AMIBAKE_RESOLVERS="{GUEST_GATEWAY}:{state.dns_port}"')
    if any(ln.startswith("bootcmd:") for ln in lines):
        raise UserError(f"role {role}'s user-data already has a bootcmd")
    prefix = ipaddress.ip_network(state.network).prefixlen
    mac = private_mac_for(instance_id)
    etc_hosts = [f"{member['address']} {private_name(m, peer)}"
                 for peer, member in state.members.items() if peer in peers]
    script = (f'for d in /sys/class/net/*; do [ "$(cat "$d/address")" = {mac} ] || continue; '
              f'ip link set "${{d##*/}}" up; '
              f'ip addr replace {address}/{prefix} dev "${{d##*/}}"; done'
              + "".join(f"; grep -qxF {shlex.quote(h)} /etc/hosts || "
                        f"echo {shlex.quote(h)} >>/etc/hosts" for h in etc_hosts))
    boot = yaml.safe_dump({"bootcmd": [["sh", "-c", script]]}, default_flow_style=False,
                          width=10_000)
    return ("\n".join(lines) + "\n" + boot).encode()


def launch_role(state: StackState, image: ImageLike, m: Manifest, role: str, *,
                root: Path | None = None, boot: Any = "uefi",
                image_label: str = "") -> LocalInstance:
    """Boot one VM for `role`, at the stack's next address; its name points there."""
    from builder.vm.metadata import new_instance_id

    address = str(ipaddress.ip_network(state.network)[state.next_host])
    state.next_host += 1
    instance_id = new_instance_id()
    user_data = stack_user_data(m, role, state, address, instance_id)
    inst = launch_local(image, m, role, root=root, boot=boot, image_label=image_label,
                        user_data=user_data, secrets=state.secrets,
                        private_network=state.mcast, instance_id=instance_id)
    state.members[role] = {"instance_id": inst.instance_id, "address": address}
    _dns(state, root).set(role, address)
    _save(state, root)
    return inst


def launch_stack(image: ImageLike, m: Manifest, *, root: Path | None = None,
                 boot: Any = "uefi", image_label: str = "") -> StackState:
    """Every stack role as its own VM (servers first); the names answer at once."""
    from builder.ports import free_port
    from builder.stack.template import stack_name, zone_name
    from builder.vm.metadata import secret_values

    stack = _stack(m)
    name = stack_name(m)
    sdir = stack_dir(name, root)
    if sdir.exists():
        raise UserError(f"a local stack {name} is already running",
                        hint=f"stop it first: amibake launch --target local --stack "
                             f"{m.source} --stop")
    sdir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sdir.mkdir(mode=0o700)
    try:
        dns_ = start_dns(sdir / "dns", zone_name(m), {})
        state = StackState(name=name, zone=dns_.zone, network=stack.cidr,
                           mcast=f"{MCAST_GROUP}:{free_port()}", dns_port=dns_.port,
                           dns_secret=dns_.secret, secrets=secret_values(m))
        _save(state, root)
        for role in boot_order(m):
            launch_role(state, image, m, role, root=root, boot=boot, image_label=image_label)
        return state
    except BaseException:
        stop_stack(name, root)
        raise


def replace_role(name: str, image: ImageLike, m: Manifest, role: str, *,
                 root: Path | None = None, boot: Any = "uefi",
                 image_label: str = "") -> LocalInstance:
    """Stop `role`'s VM and boot another in its place (a new address, the same name)."""
    state = load_state(name, root)
    old = state.members.get(role)
    if old is None:
        raise UserError(f"local stack {name} runs no role {role!r}",
                        hint=f"its roles: {', '.join(state.members)}")
    stop_instance(old["instance_id"], root)
    return launch_role(state, image, m, role, root=root, boot=boot, image_label=image_label)


def stop_stack(name: str, root: Path | None = None) -> list[str]:
    """Stop every VM of the stack and its DNS; remove its state. Returns the ids stopped."""
    sdir = stack_dir(name, root)
    if not (sdir / "stack.json").is_file():
        if sdir.is_dir():  # a start that failed before its first save
            StackDns(sdir / "dns", "", 0, "").stop()
            shutil.rmtree(sdir, ignore_errors=True)
            return []
        raise UserError(f"no local stack {name}")
    state = load_state(name, root)
    stopped = []
    for member in state.members.values():
        try:
            stop_instance(member["instance_id"], root)
            stopped.append(member["instance_id"])
        except UserError:
            pass  # already gone
    _dns(state, root).stop()
    shutil.rmtree(sdir, ignore_errors=True)
    return stopped
