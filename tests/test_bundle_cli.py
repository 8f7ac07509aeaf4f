"""The bundle / unbundle / upload-bundle verbs, end to end through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from builder.cli import main
from tests.aws_fixtures import AWS_ENV, make_stored_image
from tests.bundle_pki import Pki, make_pki

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def keys(pki: Pki) -> list[str]:
    return ["--cert", str(pki.cert), "--privatekey", str(pki.key), "--ec2cert", str(pki.ec2_cert),
            "--user", "1234-5678-9012"]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    code = main(["--json", *argv])
    captured = capsys.readouterr()
    assert code == 0, captured
    return json.loads(captured.out)  # type: ignore[no-any-return]


def test_bundle_disk_and_unbundle(tmp_path: Path, pki: Pki,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "server.img"
    with open(disk, "wb") as f:
        f.write(os.urandom(3 * MiB))
        f.truncate(40 * MiB)
    doc = run_json(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"), *keys(pki),
                    "-B", "ami=sda1,root=/dev/sda1,swap=sda3"], capsys)
    assert doc["prefix"] == "server.img" and doc["size"] == 40 * MiB
    manifest = Path(doc["manifest"])
    assert manifest.name == "server.img.manifest.xml"
    assert b"<virtual>swap</virtual><device>sda3</device>" in manifest.read_bytes()
    assert b"<user>123456789012</user>" in manifest.read_bytes()
    back = run_json(["unbundle", "-m", str(manifest), "-k", str(pki.key), "-c", str(pki.cert),
                     "-d", str(tmp_path / "restored")], capsys)
    restored = tmp_path / "restored" / "server.img"
    assert back["image"] == str(restored) and back["verified"]
    assert restored.read_bytes() == disk.read_bytes()


def test_bundle_stored_image(tmp_path: Path, pki: Pki,
                             capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "images"
    image_dir = make_stored_image(store, version="1.2.0")
    doc = run_json(["bundle", "--image", "smallpayroll", "--images", str(store),
                    "-d", str(tmp_path / "b"), *keys(pki)], capsys)
    assert doc["prefix"] == "smallpayroll-1.2.0"
    out = tmp_path / "back.raw"
    run_json(["unbundle", "-m", doc["manifest"], "-k", str(pki.key), "-o", str(out)], capsys)
    assert (hashlib.sha256(out.read_bytes()).hexdigest()
            == json.loads((image_dir / "image.json").read_text())["disk"]["sha256"])


def test_cli_errors_are_one_line(tmp_path: Path, pki: Pki,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(12 * MiB))
    assert main(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"),
                 "--cert", str(pki.cert), "--privatekey", str(pki.key),
                 "--user", "123456789012"]) == 1
    assert capsys.readouterr().err.strip() == (
        "amibake: error: --ec2cert is required (hint: pass --ec2cert)")
    run_json(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"), *keys(pki)], capsys)
    part = tmp_path / "b" / "d.img.part.01"
    part.write_bytes(part.read_bytes()[:-1] + b"!")
    assert main(["unbundle", "-m", str(tmp_path / "b" / "d.img.manifest.xml"),
                 "-k", str(pki.key), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "part 1 of 2" in err[0] and "altered or truncated" in err[0]
    assert not (tmp_path / "x").exists()


def test_bundle_volume_tree(tmp_path: Path, pki: Pki,
                            capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "root"
    for d in ("etc", "home/admin/.ssh", "proc/1", "sys/kernel", "dev", "tmp", "run", "mnt/data",
              "var/log", "var/cache/apt", "srv/app"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/hostname").write_text("old-server\n")
    (tree / "srv/app/config.ru").write_text("run App\n")
    (tree / "srv/app/big.bin").write_bytes(os.urandom(2 * MiB))
    os.link(tree / "srv/app/config.ru", tree / "srv/app/hardlink.ru")
    (tree / "srv/app/current").symlink_to("config.ru")
    (tree / "proc/1/status").write_text("State: R\n")
    (tree / "tmp/scratch").write_text("x")
    (tree / "run/pid").write_text("1")
    (tree / "mnt/data/huge").write_text("x")
    (tree / "var/log/syslog").write_text("log\n")
    (tree / "var/cache/apt/pkg.bin").write_text("cache")
    (tree / "home/admin/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA\n")
    (tree / "home/admin/.ssh/id_rsa").write_text("PRIVATE\n")
    (tree / "home/admin/server.pem").write_text("PRIVATE\n")
    (tree / "home/admin/.bash_history").write_text("ls\n")
    os.chmod(tree / "etc/hostname", 0o640)
    os.chown(tree / "srv/app/config.ru", 1234, 5678)
    dest = tree / "var" / "bundle-out"  # the destination inside the volume is excluded
    doc = run_json(["bundle", "--volume", str(tree), "-d", str(dest), "-p", "vol.img",
                    "-e", "/var/cache", *keys(pki)], capsys)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [Path(p).name for p in doc["parts"]] + ["vol.img.manifest.xml"])  # no fs image left
    image = tmp_path / "vol.img"
    run_json(["unbundle", "-m", doc["manifest"], "-k", str(pki.key), "-o", str(image)], capsys)
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", str(image)], check=True,
                   capture_output=True)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()}
    files.discard("lost+found")
    assert files == {"etc/hostname", "srv/app/config.ru", "srv/app/big.bin",
                     "srv/app/hardlink.ru", "srv/app/current"}  # var/log/syslog: logs stay out
    assert (out / "var/log").is_dir()  # ... but their directory stays
    assert (out / "srv/app/big.bin").read_bytes() == (tree / "srv/app/big.bin").read_bytes()
    for mount_point in ("proc", "sys", "dev", "tmp", "run", "mnt", "var/cache"):
        assert (out / mount_point).is_dir() or mount_point == "var/cache"
    assert not (out / "var/cache").exists() and not (out / "var/bundle-out").exists()
    stat = subprocess.run(["debugfs", "-R", "stat /srv/app/config.ru", str(image)],
                          check=True, capture_output=True, text=True).stdout
    assert "User:  1234" in stat and "Group:  5678" in stat and "Links: 2" in stat
    mode = subprocess.run(["debugfs", "-R", "stat /etc/hostname", str(image)], check=True,
                          capture_output=True, text=True).stdout
    assert "Mode:  0640" in mode
    link = subprocess.run(["debugfs", "-R", "stat /srv/app/current", str(image)], check=True,
                          capture_output=True, text=True).stdout
    assert "Type: symlink" in link and 'Fast link dest: "config.ru"' in link


def test_upload_bundle_verb(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(15 * MiB))
    doc = run_json(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"), *keys(pki)],
                   capsys)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        up = run_json(["upload-bundle", "-m", doc["manifest"], "-b", "my-bundles/web/1.0",
                       "--region", "eu-west-1", "--cert", str(pki.cert)], capsys)
        assert up["image_location"] == "my-bundles/web/1.0/d.img.manifest.xml"
        assert up["created_bucket"] and len(up["uploaded"]) == 3
        again = run_json(["upload-bundle", "-m", doc["manifest"], "-b", "my-bundles/web/1.0",
                          "--region", "eu-west-1", "--privatekey", str(pki.key)], capsys)
        assert again["uploaded"] == [] and len(again["skipped"]) == 3
        s3 = boto3.client("s3", region_name="eu-west-1")
        assert s3.get_bucket_location(Bucket="my-bundles")["LocationConstraint"] == "eu-west-1"


def test_live_root_excludes() -> None:
    from builder.bundle.volume import VolumeRequest, rsync_filters
    from builder.errors import UserError

    request = VolumeRequest(source=Path("/"), image=Path("/var/bundles/img/image"),
                            excludes=("/srv/cache", "*.log"))
    args = rsync_filters(Path("/"), request)
    excluded = [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--exclude"]
    assert set(args[::2]) == {"--exclude", "--include"}
    for path in ("/mnt/*", "/proc/*", "/sys/*", "/dev/*", "/tmp/*", "/run/*",
                 "/var/bundles/img", "/srv/cache", "*.log", "*.pem", ".ssh/authorized_keys"):
        assert path in excluded
    # the user's excludes come first: rsync's first matching rule wins
    assert args[:4] == ["--exclude", "/srv/cache", "--exclude", "*.log"]
    unfiltered = rsync_filters(Path("/"), VolumeRequest(source=Path("/"), image=Path("/mnt/x"),
                                                        filter_sensitive=False))
    assert "*.pem" not in unfiltered
    with pytest.raises(UserError, match="is the volume itself"):
        rsync_filters(Path("/srv"), VolumeRequest(source=Path("/srv"), image=Path("/srv/img")))
