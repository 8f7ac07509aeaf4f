"""cloudinit/boot/amibake-ebs-attach, as instances get it, run on this host: IMDSv2 from
amibake's metadata emulator (instance id, zone, region, the role's credentials), EC2 from
moto's server (a recording WSGI wrapper keeps every request), the device a file image
under a fake root, real blkid and mkfs.ext4. The mount command is a recorder (no host
mount): everything before it is real."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from builder.aws.instance_policy import EBS_ATTACH_ACTIONS, LiteralArns, ebs_statements
from builder.imds import ImdsConfig, ImdsServer
from builder.ports import free_port
from builder.render.ebs_storage import CONFIG, config_json
from builder.render.ebs_storage import render as render_ebs
from tests.test_aws_instance_policy import manifest

REGION, ZONE = "us-east-1", "us-east-1a"
TAGS = [{"Key": "amibake:stack", "Value": "smallpayroll"},
        {"Key": "amibake:role", "Value": "db"}]
SIZE = 32 << 20


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script as the role's fragment ships it (amibake_imds.py inlined)."""
    m = manifest(storage="ebs")
    (shipped,) = [f for f in render_ebs(m, m.roles["db"]).files
                  if f.path == "/usr/lib/amibake/amibake-ebs-attach"]
    path = tmp_path_factory.mktemp("shipped") / "amibake-ebs-attach"
    path.write_bytes(shipped.content)
    path.chmod(shipped.mode)
    return path


@dataclass
class Ec2Server:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: (action, moto's answer) -> the answer the script gets (what moto cannot be made to say)
    rewrite: Callable[[str, bytes], bytes] | None = None

    def client(self) -> Any:
        return boto3.client("ec2", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="AKIATEST0000000000", aws_secret_access_key="x")

    def actions(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["form"].get("Action") == name
                and r["agent"].startswith("Python-urllib")]


@pytest.fixture
def ec2() -> Iterator[Ec2Server]:
    """moto's server on loopback, each request's form and headers recorded."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = DomainDispatcherApplication(create_backend_app)
    port = free_port()
    server = Ec2Server(f"http://127.0.0.1:{port}")

    def recording(environ: dict[str, Any], start: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        form = dict(urllib.parse.parse_qsl(body.decode()))
        server.requests.append({
            "form": form,
            "auth": environ.get("HTTP_AUTHORIZATION", ""),
            "token": environ.get("HTTP_X_AMZ_SECURITY_TOKEN", ""),
            "agent": environ.get("HTTP_USER_AGENT", "")})
        if server.rewrite is None:
            return app(environ, start)
        answer: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            answer.update(status=status, headers=headers)

        out = server.rewrite(form.get("Action", ""), b"".join(app(environ, capture)))
        headers = [(k, v) for k, v in answer["headers"] if k.lower() != "content-length"]
        start(answer["status"], [*headers, ("Content-Length", str(len(out)))])
        return [out]

    http = make_server("127.0.0.1", port, recording, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        # moto's backends live in this process: the next test starts from nothing
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset",
                                                      method="POST"), timeout=30).close()
        http.shutdown()


@dataclass
class Instance:
    root: Path
    instance_id: str
    imds: ImdsConfig
    mounts: Path
    script: Path

    def device(self, volume_id: str) -> Path:
        return self.root / "dev/disk/by-id" / \
            f"nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"


def image_id(ec2: Ec2Server) -> str:
    """An image of the test's own (moto's default AMIs are not loaded when another test in
    this process set MOTO_EC2_LOAD_DEFAULT_AMIS=false before the backend was made)."""
    return str(ec2.client().register_image(
        Name="amibake-ebs-attach-test", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}}],
    )["ImageId"])


def volume(ec2: Ec2Server, zone: str = ZONE) -> str:
    return str(ec2.client().create_volume(
        AvailabilityZone=zone, Size=20, VolumeType="gp3",
        TagSpecifications=[{"ResourceType": "volume", "Tags": TAGS}])["VolumeId"])


@pytest.fixture
def instance(ec2: Ec2Server, tmp_path: Path, script: Path) -> Instance:
    """A db instance in moto; its fake root holds the rendered ebs-volume.json."""
    run = ec2.client().run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": ZONE})
    instance_id = run["Instances"][0]["InstanceId"]
    root = tmp_path / "root"
    config = root / CONFIG.lstrip("/")
    config.parent.mkdir(parents=True)
    m = manifest(storage="ebs")
    config.write_bytes(config_json(m))
    (root / "dev/disk/by-id").mkdir(parents=True)
    user_data = f"#cloud-config\n# amibake-role: db\n# amibake-ec2-endpoint: {ec2.url}\n"
    imds = ImdsConfig(instance_id=instance_id, region=REGION, availability_zone=ZONE,
                      user_data=user_data.encode())
    return Instance(root, instance_id, imds, tmp_path / "mounts.log", script)


def blank_device(inst: Instance, volume_id: str) -> Path:
    path = inst.device(volume_id)
    with open(path, "wb") as handle:
        handle.truncate(SIZE)
    return path


def attach(inst: Instance, imds: ImdsConfig | None = None,
           **env: str) -> subprocess.CompletedProcess[str]:
    recorder = inst.root.parent / "mount-recorder"
    if not recorder.exists():
        recorder.write_text(f"#!/bin/sh\necho \"$@\" >> {inst.mounts}\n")
        recorder.chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AMIBAKE_", "AWS_", "PYTHON", "JOURNAL_STREAM"))}
    with ImdsServer(imds or inst.imds) as server:
        base.update({"AMIBAKE_IMDS_URL": server.url, "AMIBAKE_ROOT": str(inst.root),
                     "AMIBAKE_MOUNT": str(recorder), "AMIBAKE_EC2_TIMEOUT": "5",
                     "AMIBAKE_IMDS_TIMEOUT": "5", "AMIBAKE_EBS_WAIT": "2", **env})
        return subprocess.run([str(inst.script)], env=base, capture_output=True, text=True,
                              timeout=120)


def blkid(path: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                         text=True, check=False).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error:" in line]


# ------------------------------------------------------------------ the boot step


def test_attaches_formats_blank_and_mounts(ec2: Ec2Server, instance: Instance) -> None:
    vid = volume(ec2)
    device = blank_device(instance, vid)
    proc = attach(instance)
    assert proc.returncode == 0, proc.stderr
    # the requests, as the script sent them (signed with the role's IMDS credentials)
    (describe, *_) = ec2.actions("DescribeVolumes")
    filters = {describe["form"][f"Filter.{i}.Name"]: describe["form"][f"Filter.{i}.Value.1"]
               for i in (1, 2, 3)}
    assert filters == {"tag:amibake:role": "db", "tag:amibake:stack": "smallpayroll",
                       "availability-zone": ZONE}
    (request,) = ec2.actions("AttachVolume")
    assert {k: request["form"][k] for k in ("VolumeId", "InstanceId", "Device")} == {
        "VolumeId": vid, "InstanceId": instance.instance_id, "Device": "/dev/sdf"}
    creds = instance.imds.credentials
    assert f"Credential={creds.access_key_id}/" in request["auth"]
    assert f"/{REGION}/ec2/aws4_request" in request["auth"]
    assert request["token"] == creds.token
    # moto agrees: attached here
    (vol,) = ec2.client().describe_volumes(VolumeIds=[vid])["Volumes"]
    assert [(a["InstanceId"], a["State"]) for a in vol["Attachments"]] == [
        (instance.instance_id, "attached")]
    # a blank device got ext4 with amibake's label, then was mounted at the mount point
    probe = blkid(device)
    assert (probe["TYPE"], probe["LABEL"]) == ("ext4", "amibake-data")
    assert instance.mounts.read_text().split() == [
        "-o", "noatime", str(device), str(instance.root / "mnt")]
    assert f"volume {vid}" in proc.stderr and "is mounted at /mnt" in proc.stderr
    # what the script called is exactly what the role's policy grants for its volume
    sent = {f"ec2:{r['form']['Action']}" for r in ec2.requests
            if r["agent"].startswith("Python-urllib")}
    assert sent == set(EBS_ATTACH_ACTIONS)
    granted = {a for st in ebs_statements(manifest(storage="ebs"), "db", LiteralArns())
               for a in st["Action"]}
    assert granted == set(EBS_ATTACH_ACTIONS)

    # the next boot (stop/start): attached already, filesystem kept, mounted again
    uuid = probe["UUID"]
    instance.mounts.unlink()
    again = attach(instance)
    assert again.returncode == 0, again.stderr
    assert len(ec2.actions("AttachVolume")) == 1
    assert "attached to" in again.stderr and "already" in again.stderr
    assert blkid(device)["UUID"] == uuid
    assert "keeping it" in again.stderr
    assert instance.mounts.read_text().split()[-1] == str(instance.root / "mnt")


def test_existing_filesystem_is_never_formatted(ec2: Ec2Server, instance: Instance,
                                                tmp_path: Path) -> None:
    vid = volume(ec2)
    content = tmp_path / "content"
    (content / "postgresql").mkdir(parents=True)
    (content / "postgresql/PG_VERSION").write_text("15\n")
    device = instance.device(vid)
    subprocess.run(["mkfs.ext4", "-q", "-L", "old-data", "-d", str(content), str(device),
                    "32M"], check=True)
    before = blkid(device)
    proc = attach(instance)
    assert proc.returncode == 0, proc.stderr
    after = blkid(device)
    assert (after["UUID"], after["LABEL"]) == (before["UUID"], "old-data")
    cat = subprocess.run(["debugfs", "-R", "cat /postgresql/PG_VERSION", str(device)],
                         capture_output=True, text=True, check=True)
    assert cat.stdout == "15\n"
    assert "holds a ext4 filesystem: keeping it" in proc.stderr


@pytest.mark.parametrize("kind", ["partition table", "unknown data"])
def test_device_with_other_data_is_refused_untouched(ec2: Ec2Server, instance: Instance,
                                                     kind: str) -> None:
    vid = volume(ec2)
    device = blank_device(instance, vid)
    if kind == "partition table":
        subprocess.run(["sfdisk", "-q", str(device)], input="label: dos\n,,L\n", text=True,
                       check=True, capture_output=True)
    else:
        with open(device, "r+b") as handle:
            handle.seek(4096)
            handle.write(b"\x17not a filesystem, but somebody's data" * 10)
    digest = hashlib.sha256(device.read_bytes()).hexdigest()
    proc = attach(instance)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "is not blank and holds no filesystem" in line
    assert ("PTTYPE=dos" if kind == "partition table" else "does not recognise") in line
    assert hashlib.sha256(device.read_bytes()).hexdigest() == digest
    assert not instance.mounts.exists()


def test_volume_attached_elsewhere_is_refused(ec2: Ec2Server, instance: Instance) -> None:
    vid = volume(ec2)
    device = blank_device(instance, vid)
    client = ec2.client()
    other = client.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1,
                                 Placement={"AvailabilityZone": ZONE})["Instances"][0]
    client.attach_volume(VolumeId=vid, InstanceId=other["InstanceId"], Device="/dev/sdf")
    proc = attach(instance)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert f"volume {vid} is attached to instance {other['InstanceId']}: refusing to take it" \
        in line
    assert "detach-volume" in line
    assert not ec2.actions("AttachVolume")
    assert blkid(device) == {}  # still blank: never formatted
    assert not instance.mounts.exists()


def test_waits_while_an_old_instance_lets_go(ec2: Ec2Server, instance: Instance) -> None:
    """A replacement boots while the old instance's termination detaches the volume: the
    first answers say `detaching` (moto never does: they are rewritten), then it is free."""
    vid = volume(ec2)
    blank_device(instance, vid)
    answers = {"detaching": 2}

    def old_attachment(action: str, body: bytes) -> bytes:
        if action != "DescribeVolumes" or not answers["detaching"]:
            return body
        answers["detaching"] -= 1
        item = (b"<attachmentSet><item><volumeId>" + vid.encode() + b"</volumeId>"
                b"<instanceId>i-0123456789abcdef9</instanceId><device>/dev/sdf</device>"
                b"<status>detaching</status></item></attachmentSet>")
        empty = [b"<attachmentSet/>", b"<attachmentSet></attachmentSet>"]
        found = [e for e in empty if e in body]
        assert found, body[:2000]
        return body.replace(found[0], item)

    ec2.rewrite = old_attachment
    proc = attach(instance, AMIBAKE_EBS_WAIT="30")
    assert proc.returncode == 0, proc.stderr
    assert answers["detaching"] == 0
    assert "detaching from another instance; waiting" in proc.stderr
    (request,) = ec2.actions("AttachVolume")
    assert request["form"]["InstanceId"] == instance.instance_id


def test_no_volume_in_this_zone_names_where_it_is(ec2: Ec2Server, instance: Instance) -> None:
    vid = volume(ec2, zone="us-east-1b")
    proc = attach(instance)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "no volume tagged amibake:role=db, amibake:stack=smallpayroll in us-east-1a" in line
    assert f"{vid} is in us-east-1b" in line
    assert not ec2.actions("AttachVolume")


def test_two_volumes_are_refused(ec2: Ec2Server, instance: Instance) -> None:
    volume(ec2)
    volume(ec2)
    proc = attach(instance)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "2 volumes tagged" in line and "refusing to choose" in line
    assert not ec2.actions("AttachVolume")


def test_no_instance_role_is_one_line(ec2: Ec2Server, instance: Instance) -> None:
    from dataclasses import replace

    volume(ec2)
    proc = attach(instance, replace(instance.imds, iam_role=""))
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "this instance has no IAM role" in line
    assert "amibake iam-policy --role ROLE MANIFEST" in line
    assert not ec2.actions("DescribeVolumes")


def test_ec2_refusal_is_one_line(ec2: Ec2Server, instance: Instance) -> None:
    """An AccessDenied-like answer (here: an unknown instance id) stops at once."""
    from dataclasses import replace

    volume(ec2)
    proc = attach(instance, replace(instance.imds, instance_id="i-0000000000000dead"))
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "ec2 AttachVolume: HTTP 400 InvalidInstanceID.NotFound" in line
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the rendered step


def test_rendered_step_and_units() -> None:
    from builder.render import role_fragments

    m = manifest(storage="ebs")
    (frag,) = [f for f in role_fragments(m, "db") if f.component == "ebs-storage"]
    components = [f.component for f in role_fragments(m, "db")]
    assert components.index("ebs-storage") < components.index("postgresql")
    assert frag.setup == ("/usr/lib/amibake/amibake-ebs-attach",)
    assert frag.services == ("amibake-ebs-attach.service",)
    files = {f.path: f.content.decode() for f in frag.files}
    config = json.loads(files[CONFIG])
    assert config["version"] == 1
    assert config["roles"]["db"] == {
        "tags": {"amibake:stack": "smallpayroll", "amibake:role": "db"},
        "device": "/dev/sdf", "label": "amibake-data", "mount_point": "/mnt",
        "wait_seconds": 300}
    # every role with postgresql (the seed's all-in-one too), each its own volume
    assert sorted(config["roles"]) == ["all-in-one", "db"]
    assert config["roles"]["all-in-one"]["tags"]["amibake:role"] == "all-in-one"
    unit = files["/etc/systemd/system/amibake-ebs-attach.service"]
    assert "Before=postgresql@15-main.service amibake-db-restore.service" in unit
    assert "ExecStart=/usr/lib/amibake/amibake-ebs-attach" in unit
    for unit_name in ("postgresql@.service", "amibake-db-restore.service"):
        dropin = files[f"/etc/systemd/system/{unit_name}.d/amibake-ebs.conf"]
        assert "Requires=amibake-ebs-attach.service" in dropin
        assert "After=amibake-ebs-attach.service" in dropin
    # nothing of it without storage: ebs, and never on roles without postgresql
    assert not [f for f in role_fragments(manifest(), "db") if f.component == "ebs-storage"]
    assert not [f for f in role_fragments(m, "web") if f.component == "ebs-storage"]
    assert render_ebs(m, m.roles["web"]).files == ()


def test_units_pass_systemd_analyze(tmp_path: Path, script: Path) -> None:
    m = manifest(storage="ebs")
    frag = render_ebs(m, m.roles["db"])
    units = tmp_path / "units"
    units.mkdir()
    for f in frag.files:
        if f.path.endswith(".service"):
            (units / f.path.rpartition("/")[2]).write_bytes(f.content)
    unit = units / "amibake-ebs-attach.service"
    text = unit.read_text().replace("/usr/lib/amibake/amibake-ebs-attach", str(script))
    unit.write_text(text)
    with contextlib.suppress(FileNotFoundError):
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
        assert "amibake-ebs-attach.service" not in proc.stderr, proc.stderr
        return
    pytest.fail("systemd-analyze is missing (APT_PACKAGES: systemd)")
