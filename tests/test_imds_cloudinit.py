"""Real cloud-init (Debian bookworm's 22.4.2) crawls the IMDS emulator.

cloud-init's own Ec2 datasource (DataSourceEc2.get_data: token, API version
probe, user-data, the whole meta-data tree, the identity document) runs in
a subprocess against the emulator, from the Python package inside Debian's
cloud-init .deb (extracted into .cache/cloud-init/, never installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builder.imds import ImdsConfig, ImdsServer, Outage

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "cloud-init"
SITE = CACHE / "root" / "usr" / "lib" / "python3" / "dist-packages"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmibakeTestKey admin@example"

CRAWL = r"""
import json, sys, tempfile
from cloudinit import distros, helpers
from cloudinit.sources import DataSourceEc2 as ec2

url, cloud, mac, max_wait = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tmp = tempfile.mkdtemp()
paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
distro = distros.fetch("debian")("debian", {}, paths)
cfg = {"datasource": {"Ec2": {"metadata_urls": [url], "max_wait": max_wait, "timeout": 5}}}
ds = ec2.DataSourceEc2(sys_cfg=cfg, distro=distro, paths=paths)
# What DMI says on EC2 (and what amibake's VMs' SMBIOS says): ds-identify and
# identify_platform() read it from /sys, which a test host does not have.
ds._cloud_name = cloud
ok = ds.get_data()
out = {"ok": ok}
if ok:
    ud = ds.userdata_raw
    out.update(
        metadata=ds.metadata,
        userdata=ud.decode() if isinstance(ud, bytes) else ud,
        identity=ds.identity,
        instance_id=ds.get_instance_id(),
        availability_zone=ds.availability_zone,
        region=ds.region,
        keys=ds.get_public_ssh_keys(),
        api_version=ds._crawled_metadata["_metadata_api_version"],
        network=ec2.convert_ec2_metadata_network_config(
            ds.metadata["network"], macs_to_nics={mac: "eth0"}),
        launch_index=ds.launch_index,
    )
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def cloud_init_site() -> Path:
    """cloud-init's Python package from Debian's .deb (H2's `make` target puts
    it in the same place; extracted here when missing)."""
    if not (SITE / "cloudinit" / "sources" / "DataSourceEc2.py").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        debs = sorted(CACHE.glob("cloud-init_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", "cloud-init"], cwd=CACHE, check=True,
                           capture_output=True)
            debs = sorted(CACHE.glob("cloud-init_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(CACHE / "root")], check=True)
    version = (SITE / "cloudinit" / "version.py").read_text()
    assert '"22.4.2"' in version, "expected Debian bookworm's cloud-init 22.4.2"
    return SITE


def crawl(site: Path, url: str, cloud: str = "aws", mac: str = "52:54:00:12:34:56",
          max_wait: int = 30) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", CRAWL, url, cloud, mac, str(max_wait)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def config() -> ImdsConfig:
    return ImdsConfig(
        instance_id="i-0c1d2e3f4a5b6c7d8", ami_id="ami-0feedface0000001",
        instance_type="t3.small", region="us-east-1", public_keys=(KEY,),
        tags={"Role": "web", "Name": "web-1"},
        user_data=b"#cloud-config\n# amibake-role: web\npackages: [nginx]\n",
    )


def test_cloud_init_ec2_datasource_reads_the_whole_tree(
    cloud_init_site: Path, config: ImdsConfig,
) -> None:
    with ImdsServer(config) as imds:
        got = crawl(cloud_init_site, imds.url)
        records = imds.requests
    assert got["ok"] is True
    assert got["api_version"] == "2021-03-23"
    md = got["metadata"]
    assert md["instance-id"] == "i-0c1d2e3f4a5b6c7d8"
    assert md["ami-id"] == "ami-0feedface0000001"
    assert md["ami-launch-index"] == "0"
    assert md["instance-type"] == "t3.small"
    assert md["local-ipv4"] == "10.0.2.15"
    assert md["public-ipv4"] == "192.0.2.10"
    assert md["placement"] == {"availability-zone": "us-east-1a",
                               "availability-zone-id": "use1-az1", "region": "us-east-1"}
    assert md["public-keys"] == {"amibake": KEY}
    assert md["tags"] == {"instance": {"Name": "web-1", "Role": "web"}}
    assert md["block-device-mapping"] == {"ami": "/dev/xvda", "root": "/dev/xvda",
                                          "ephemeral0": "sdb"}
    assert md["services"]["domain"] == "amazonaws.com"
    assert md["iam"]["info"]["Code"] == "Success"
    assert "security-credentials" not in md["iam"]  # cloud-init skips credentials
    assert got["userdata"] == config.user_data.decode()
    assert got["identity"]["instanceId"] == "i-0c1d2e3f4a5b6c7d8"
    assert got["instance_id"] == "i-0c1d2e3f4a5b6c7d8"
    assert got["availability_zone"] == "us-east-1a"
    assert got["region"] == "us-east-1"
    assert got["keys"] == [KEY]
    assert got["launch_index"] == "0"
    assert got["network"] == {"version": 2, "ethernets": {"eth0": {
        "dhcp4": True, "dhcp6": False, "match": {"macaddress": "52:54:00:12:34:56"},
        "set-name": "eth0"}}}
    # IMDSv2 throughout: a token first, then every GET carried it.
    assert records[0].method == "PUT" and records[0].path == "/latest/api/token"
    gets = [r for r in records if r.method == "GET"]
    assert len(gets) > 30
    assert all(r.token and r.status == 200 for r in gets), [
        (r.path, r.status) for r in gets if r.status != 200]


def test_cloud_init_refreshes_an_expired_token_mid_crawl(
    cloud_init_site: Path, config: ImdsConfig,
) -> None:
    with ImdsServer(replace(config, token_max_uses=25)) as imds:
        got = crawl(cloud_init_site, imds.url)
        records = imds.requests
    assert got["ok"] is True
    assert got["metadata"]["tags"]["instance"]["Role"] == "web"
    assert sum(r.method == "PUT" for r in records) >= 2
    assert any(r.status == 401 for r in records)


def test_cloud_init_waits_for_a_late_service(cloud_init_site: Path, config: ImdsConfig) -> None:
    with ImdsServer(replace(config, outages=(Outage("refuse", seconds=2.0),))) as imds:
        got = crawl(cloud_init_site, imds.url)
    assert got["ok"] is True
    assert got["instance_id"] == "i-0c1d2e3f4a5b6c7d8"


def test_cloud_init_imdsv1_off_ec2_with_optional_tokens(
    cloud_init_site: Path, config: ImdsConfig,
) -> None:
    with ImdsServer(replace(config, require_token=False)) as imds:
        got = crawl(cloud_init_site, imds.url, cloud="unknown")
        records = imds.requests
    assert got["ok"] is True
    assert got["metadata"]["instance-id"] == "i-0c1d2e3f4a5b6c7d8"
    assert not any(r.method == "PUT" for r in records)


def test_cloud_init_finds_nothing_when_tokens_are_required_and_it_sends_none(
    cloud_init_site: Path, config: ImdsConfig,
) -> None:
    with ImdsServer(config) as imds:
        got = crawl(cloud_init_site, imds.url, cloud="unknown", max_wait=3)
        records = imds.requests
    # cloud-init off EC2 never asks for a token; HttpTokens=required refuses it.
    assert got["ok"] is False
    assert records and all(r.status == 401 and r.token is None for r in records)
