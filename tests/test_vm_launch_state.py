"""Local instance bookkeeping and the launch/instances verbs' user errors (no VM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.vm.launch import launch_local, list_instances, state_root, stop_instance

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"


def _fake_instance(root: Path, iid: str, pid: int) -> Path:
    d = root / iid
    d.mkdir(parents=True)
    (d / "instance.json").write_text(json.dumps({
        "instance_id": iid, "role": "web", "image": "smallpayroll 1.0.0", "boot": "uefi",
        "supervisor_pid": pid, "qemu_pid": pid, "ssh_port": 1, "http_port": 2,
        "imds_port": 3, "login_user": "admin", "started_at": "2026-11-25T00:00:00+00:00",
    }))
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_state_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("AMIBAKE_STATE_DIR", str(tmp_path / "s"))
    assert state_root() == tmp_path / "s"
    monkeypatch.delenv("AMIBAKE_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert state_root() == tmp_path / ".local/state/amibake/instances"


def test_an_instance_whose_supervisor_is_gone_lists_as_exited_and_can_be_cleared(
    tmp_path: Path,
) -> None:
    d = _fake_instance(tmp_path, "i-00000000000000001", _dead_pid())
    # a live pid that is not this instance's supervisor does not count either
    _fake_instance(tmp_path, "i-00000000000000002", 1)
    (tmp_path / "i-half-started").mkdir()  # no instance.json: not listed
    listed = list_instances(tmp_path)
    assert [(i.instance_id, i.running) for i in listed] == [
        ("i-00000000000000001", False), ("i-00000000000000002", False)]
    assert listed[0].as_json()["state"] == "exited"
    stop_instance("i-00000000000000001", tmp_path)
    assert not d.exists()
    with pytest.raises(UserError, match="no local instance i-nope"):
        stop_instance("i-nope", tmp_path)


def test_launch_of_a_missing_disk_leaves_no_state(tmp_path: Path) -> None:
    class Missing:
        disk_path = tmp_path / "nope" / "disk.raw"

    manifest = load_manifest(MANIFEST)
    with pytest.raises(UserError, match="image disk not found"):
        launch_local(Missing(), manifest, "web", root=tmp_path / "state")
    with pytest.raises(UserError, match="unknown role"):
        launch_local(Missing(), manifest, "mail", root=tmp_path / "state")
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_cli_user_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AMIBAKE_STATE_DIR", str(tmp_path / "state"))
    assert main(["launch", "mail", "--manifest", str(MANIFEST)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown role 'mail'" in err
    assert main(["instances", "stop"]) == 1
    assert "name the instances to stop" in capsys.readouterr().err
    assert main(["instances", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no local instances"
    # an empty store: a one-line error naming what is missing
    assert main(["launch", "web", "--manifest", str(MANIFEST),
                 "--store", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.startswith("amibake: error:")


def test_launch_on_aws_without_credentials_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["launch", "--target", "aws", "web", "--manifest", str(MANIFEST)]) == 1
    assert "no AWS credentials configured: nothing was launched" in capsys.readouterr().err


def test_launch_on_aws_goes_through_launch_aws(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The verb wires the CLI to builder.aws.launch (moto stands in for EC2/SSM)."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with mock_aws():
        import boto3
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ami = ec2.register_image(Name="smallpayroll-1.0.0")["ImageId"]
        boto3.client("ssm", region_name="us-east-1").put_parameter(
            Name="/amibake/smallpayroll/1.0.0", Value=ami, Type="String")
        assert main(["--json", "launch", "--target", "aws", "web", "--manifest", str(MANIFEST),
                     "--version", "1.0.0", "--ssh-cidr", "203.0.113.7/32",
                     "--key-dir", str(tmp_path / "keys")]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["image_id"] == ami and doc["role"] == "web"
        (inst,) = ec2.describe_instances(InstanceIds=[doc["instance_id"]])[
            "Reservations"][0]["Instances"]
        assert inst["ImageId"] == ami
        assert {"Key": "Role", "Value": "web"} in inst["Tags"]


@pytest.mark.parametrize("hostile", ["../../victim", "../victim", "/tmp", ".", "",
                                     "i-00000000000000001/..", "i-0000000000000000\n1"])
def test_stop_refuses_ids_it_did_not_create(tmp_path: Path, hostile: str,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`instances stop ../../victim` once deleted a directory outside the state dir."""
    root = tmp_path / "a" / "state"
    root.mkdir(parents=True)
    victim = _fake_instance(tmp_path, "victim", _dead_pid())
    (victim / "instance.json").write_text((victim / "instance.json").read_text().replace(
        '"victim"', json.dumps(hostile)))
    mine = _fake_instance(root, "i-00000000000000001", _dead_pid())
    monkeypatch.setenv("AMIBAKE_STATE_DIR", str(root))
    assert main(["instances", "stop", hostile]) == 1
    err = capsys.readouterr().err
    assert err.startswith("amibake: error: no local instance") and err.count("\n") == 1
    assert (victim / "instance.json").exists() and (mine / "instance.json").exists()
    assert (tmp_path / "a").is_dir()


def test_stop_refuses_a_link_or_a_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "state"
    victim = _fake_instance(tmp_path, "i-00000000000000009", _dead_pid())
    root.mkdir()
    (root / "i-00000000000000009").symlink_to(victim)
    # a directory of the right name whose instance.json names another instance
    other = _fake_instance(root, "i-0000000000000000a", _dead_pid())
    (other / "instance.json").write_text((other / "instance.json").read_text().replace(
        "i-0000000000000000a", "i-0000000000000000b"))
    assert list_instances(root) == []
    for iid in ("i-00000000000000009", "i-0000000000000000a"):
        with pytest.raises(UserError, match=f"no local instance {iid}"):
            stop_instance(iid, root)
    assert (victim / "instance.json").exists() and (other / "instance.json").exists()


def test_launch_state_is_private_from_the_start(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """launch.json (it holds the instance's secrets) and the logs are created
    0600 in a 0700 directory: seen at the moment the supervisor would start."""
    import builder.vm.launch as launch

    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    seen: dict[str, int] = {}
    real_popen = launch.subprocess.Popen

    def popen(argv: list[str], **kw: object) -> object:
        if launch.SUPERVISOR_MODULE not in argv:
            return real_popen(argv, **kw)  # type: ignore[call-overload]
        idir = Path(argv[-1])
        for path in (idir.parent, idir, idir / "launch.json", idir / "supervisor.log",
                     idir / "id_ed25519"):
            seen[path.name] = path.stat().st_mode & 0o777
        raise OSError("the test stops the launch here")

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    real_chmod = os.chmod

    def chmod(path: object, mode: int, **kw: object) -> None:
        # only write_atomically's private temp file (created 0600) may be chmodded
        assert Path(str(path)).name.startswith("."), f"chmod after writing: {path}"
        real_chmod(path, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", chmod)

    class Image:
        disk_path = disk

    with pytest.raises(OSError, match="the test stops"):
        launch_local(Image(), load_manifest(MANIFEST), "web", root=tmp_path / "state")
    assert seen.pop("state") == 0o700
    assert set(seen.values()) <= {0o700, 0o600} and len(seen) == 4, seen
    assert list((tmp_path / "state").iterdir()) == []  # nothing left behind
