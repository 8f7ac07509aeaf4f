"""The local stack's parts that need no VM: its DNS (real Knot), each VM's user-data
(read back by cloud-init's schema and sh), and the qemu command line of its private NIC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from builder.manifest import load_manifest
from builder.vm.qemu import GUEST_GATEWAY, private_mac_for
from builder.vm.stack_dns import start_dns
from builder.vm.stack_launch import StackState, boot_order, stack_user_data

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"


def _state() -> StackState:
    return StackState(name="smallpayroll", zone="smallpayroll.internal", network="10.0.0.0/16",
                      mcast="230.0.74.1:40000", dns_port=40053, dns_secret="x", secrets={},
                      members={"db": {"instance_id": "i-0123456789abcdef0",
                                      "address": "10.0.0.10"}})


def test_names_resolve_and_move(tmp_path: Path) -> None:
    dns = start_dns(tmp_path / "dns", "smallpayroll.internal", {"db": "10.0.0.10"})
    try:
        assert dns.lookup("db") == ("10.0.0.10",)
        assert dns.lookup("app") == ()
        dns.set("app", "10.0.0.11")
        assert dns.lookup("app") == ("10.0.0.11",)
        dns.set("app", "10.0.0.13")  # the app VM replaced: its name moves
        assert dns.lookup("app") == ("10.0.0.13",)
    finally:
        dns.stop()


def test_servers_boot_before_their_clients() -> None:
    assert boot_order(load_manifest(SEED)) == ["db", "app", "web"]


def test_user_data_wires_the_private_network(tmp_path: Path) -> None:
    m = load_manifest(SEED)
    state = _state()
    iid = "i-0fedcba9876543210"
    web = stack_user_data(m, "web", state, "10.0.0.12", iid).decode()
    doc = yaml.safe_load(web)
    assert web.startswith("#cloud-config\n# amibake-role: web\n")
    hosts_env = next(f["content"] for f in doc["write_files"]
                     if f["path"] == "/etc/amibake/hosts.env")
    assert 'AMIBAKE_HOSTS_APP="app.smallpayroll.internal"' in hosts_env
    assert f'AMIBAKE_RESOLVERS="{GUEST_GATEWAY}:40053"' in hosts_env
    ((sh, flag, script),) = doc["bootcmd"]
    assert (sh, flag) == ("sh", "-c")
    assert private_mac_for(iid) in script and "10.0.0.12/16" in script
    assert "/etc/hosts" not in script  # web reaches the app through nginx's resolver
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    app = yaml.safe_load(stack_user_data(m, "app", state, "10.0.0.11", iid))
    ((_, _, script),) = app["bootcmd"]
    assert "'10.0.0.10 db.smallpayroll.internal'" in script
    hosts_env = next(f["content"] for f in app["write_files"]
                     if f["path"] == "/etc/amibake/hosts.env")
    assert 'AMIBAKE_HOSTS_DB="db.smallpayroll.internal"' in hosts_env


def test_private_nic_is_a_multicast_socket_on_loopback(tmp_path: Path) -> None:
    from builder.vm.accel import TCG_ARGS, Accel
    from builder.vm.firmware import prepare_firmware
    from builder.vm.qemu import Ports, VmPaths, VmSpec, build_command

    def command(private: str | None) -> list[str]:
        spec = VmSpec(disk=tmp_path / "disk.raw", imds_port=41234,
                      instance_id="i-0123456789abcdef0", private_network=private)
        return build_command(spec, VmPaths(tmp_path), Ports(ssh=42022, http=42080),
                             prepare_firmware(spec.boot, tmp_path),
                             Accel("tcg", TCG_ARGS, "test"))

    plain, stacked = command(None), command("230.0.74.1:40000")
    assert stacked[:len(plain) - 6] == plain[:len(plain) - 6]  # one command line, one NIC more
    netdevs = [stacked[i + 1] for i, a in enumerate(stacked) if a == "-netdev"]
    assert netdevs[1] == "socket,id=net1,mcast=230.0.74.1:40000,localaddr=127.0.0.1"
    devices = [stacked[i + 1] for i, a in enumerate(stacked) if a == "-device"]
    assert f"virtio-net-pci,netdev=net1,mac={private_mac_for('i-0123456789abcdef0')}" in devices
    assert len([a for a in plain if a == "-netdev"]) == 1


def test_dispatcher_waits_for_the_peers_names(tmp_path: Path) -> None:
    """cloud-init writes hosts.env in parallel with the dispatcher: the dispatcher waits
    for it before the setup scripts read it (only when the user-data writes it)."""
    import importlib.machinery
    import importlib.util
    import threading

    from tests.shipped_boot import shipped

    loader = importlib.machinery.SourceFileLoader("amibake_dispatch_test",
                                                  str(shipped("amibake-dispatch")))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    dispatch = importlib.util.module_from_spec(spec)
    loader.exec_module(dispatch)
    m = load_manifest(SEED)
    web = stack_user_data(m, "web", _state(), "10.0.0.12", "i-0fedcba9876543210")
    hosts = tmp_path / "etc/amibake/hosts.env"
    hosts.parent.mkdir(parents=True)
    logged: list[str] = []

    class Log:
        def info(self, message: str) -> None:
            logged.append(message)

        warning = info

    writer = threading.Timer(0.5, lambda: hosts.write_text('AMIBAKE_HOSTS_APP="app"\n'))
    writer.start()
    dispatch.wait_for_hosts(str(tmp_path), web, Log())
    writer.join()
    assert hosts.read_text() and logged == []
    # user-data without other roles' names: nothing to wait for
    hosts.unlink()
    dispatch.wait_for_hosts(str(tmp_path), b"#cloud-config\n# amibake-role: db\n", Log())
    assert not hosts.exists() and logged == []
