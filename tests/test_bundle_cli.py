"""The bundle / unbundle / upload-bundle verbs, end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from builder.cli import main
from builder.disk_digest import file_digest
from tests.aws_fixtures import AWS_ENV, make_stored_image
from tests.bundle_pki import Pki, make_pki, resign

MiB = 1024 * 1024
pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws


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
    assert (file_digest(out)
            == json.loads((image_dir / "image.json").read_text())["disk"]["digest"])


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


# ------------------------------------------ secrets stay out of --volume images

SECRETS = (  # every file here holds the marker; none may reach the image
    "etc/amibake/app.env", "etc/amibake/db.env", "var/lib/amibake/state.json",
    "etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-",
    "etc/ssl/private/ssl-cert-snakeoil.key",
    "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_rsa_key",
    "root/.ssh/id_ed25519", "home/admin/.ssh/id_rsa", "home/admin/.ssh/authorized_keys",
    "root/.aws/credentials", "root/.aws/config", "home/admin/.netrc", "home/admin/.pgpass",
    "home/admin/.docker/config.json", "root/.bash_history", "home/admin/.zsh_history",
    "home/admin/.psql_history", "home/admin/.mysql_history",
    "var/lib/cloud/instances/i-0123/user-data.txt", "var/lib/cloud/instances/i-0123/obj.pkl",
    "var/log/syslog", "var/log/nginx/access.log", "srv/cache/session.db",
)
KEPT = ("etc/hostname", "etc/passwd", "etc/amibake/roles.yaml", "etc/ssh/sshd_config",
        "etc/ssh/ssh_host_ed25519_key.pub", "root/.ssh/id_ed25519.pub",
        "home/admin/.bashrc", "home/admin/.docker/readme.txt", "var/lib/cloud/data/ok.txt")
MARKER = b"SECRET-c0ffee-MARKER"


def test_volume_leaves_every_secret_out(tmp_path: Path, pki: Pki,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "root"
    for rel in SECRETS:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(MARKER + b" " + rel.encode() + b"\n")
    for rel in KEPT:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(f"harmless {rel}\n")
    (tree / "var/lib/cloud/instance").symlink_to("instances/i-0123")
    dest = tmp_path / "out"
    argv = ["bundle", "--volume", str(tree), "-d", str(dest), "-p", "vol.img",
            "-e", "/srv/cache", *keys(pki)]
    plan = run_json([*argv, "--dry-run"], capsys)
    shown = {f["pattern"] for f in plan["filters"] if f["rule"] == "exclude"}
    assert {"/etc/shadow*", "/etc/gshadow*", "/etc/ssl/private/*", "/etc/ssh/ssh_host_*key",
            ".ssh/id_*", ".aws/", ".netrc", ".pgpass", ".docker/config.json", ".*history",
            "/var/lib/cloud/instance*", "/var/log/**", "/etc/amibake/*.env",
            "/var/lib/amibake", "/srv/cache"} <= shown
    assert not dest.exists()  # a dry run writes nothing
    doc = run_json(argv, capsys)
    image = tmp_path / "vol.img"
    run_json(["unbundle", "-m", doc["manifest"], "-k", str(pki.key), "-c", str(pki.cert),
              "-o", str(image)], capsys)
    with open(image, "rb") as f:  # not in any file, directory entry or free block
        while block := f.read(MiB):
            assert MARKER not in block
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", str(image)], check=True,
                   capture_output=True)
    files = {str(p.relative_to(out)) for p in out.rglob("*")
             if not p.is_dir() or p.is_symlink()}
    assert files == set(KEPT)
    for kept_dir in ("etc/ssl/private", "var/log", "var/log/nginx", "var/lib/cloud",
                     "srv"):
        assert (out / kept_dir).is_dir(), kept_dir


# ------------------------------------- upload-bundle checks before it sends anything


@pytest.fixture
def upload_env(aws: Any) -> Any:
    """moto (tests/aws_plugin.py's `aws`) and an S3 client to look into it."""
    return boto3.client("s3", region_name="eu-west-1")


def _small_bundle(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> Path:
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(15 * MiB))
    doc = run_json(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"), *keys(pki)],
                   capsys)
    return Path(doc["manifest"])


def _refused_upload(manifest: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                    s3: Any, cert: Path | None = None) -> str:
    code = main(["upload-bundle", "-m", str(manifest), "-b", "my-bundles/x",
                 "--region", "eu-west-1", "--cert", str(cert or pki.cert)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert s3.list_buckets()["Buckets"] == []  # nothing was sent: not even a bucket
    return err[0]


def test_upload_bundle_refuses_a_tampered_part(tmp_path: Path, pki: Pki, upload_env: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _small_bundle(tmp_path, pki, capsys)
    part = manifest.parent / "d.img.part.01"
    data = bytearray(part.read_bytes())
    data[1000] ^= 1
    part.write_bytes(bytes(data))
    assert "part 1 of 2" in _refused_upload(manifest, pki, capsys, upload_env)


def test_upload_bundle_refuses_a_path_traversal(tmp_path: Path, pki: Pki, upload_env: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`<filename>../../etc/shadow</filename>`, even signed with the user's own key."""
    manifest = _small_bundle(tmp_path, pki, capsys)
    data = manifest.read_bytes().replace(b"<filename>d.img.part.00<",
                                         b"<filename>../../etc/shadow<")
    manifest.write_bytes(resign(data, pki.key))
    line = _refused_upload(manifest, pki, capsys, upload_env)
    assert "part 0 is named '../../etc/shadow', not d.img.part.0" in line


def test_upload_bundle_refuses_symlinked_part_and_wrong_signer(
        tmp_path: Path, pki: Pki, upload_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _small_bundle(tmp_path, pki, capsys)
    assert "signature does not verify" in _refused_upload(manifest, pki, capsys, upload_env,
                                                          cert=pki.other_cert)
    secret = tmp_path / "secret"
    secret.write_text("not for S3\n")
    part = manifest.parent / "d.img.part.00"
    part.unlink()
    part.symlink_to(secret)
    assert "is a symlink" in _refused_upload(manifest, pki, capsys, upload_env)


# ------------------------------------------------------------ one line, no traceback


def test_bad_inputs_are_one_line_errors(tmp_path: Path, pki: Pki,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    huge = tmp_path / "huge.xml"
    with open(huge, "wb") as f:
        f.truncate(64 * MiB)
    binary = tmp_path / "binary.xml"
    binary.write_bytes(os.urandom(4096))
    latin1 = tmp_path / "latin1.xml"
    latin1.write_bytes("<?xml version='1.0'?><manifest>caf\xe9</manifest>".encode("latin-1"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    key = ["-k", str(pki.key)]
    disk = tmp_path / "one.img"
    disk.write_bytes(b"x")
    good = run_json(["bundle", "--disk", str(disk), "-d", str(tmp_path / "b"), *keys(pki)],
                    capsys)["manifest"]
    cases = {
        ("unbundle", "-m", str(tmp_path), *key): "is a directory",
        ("unbundle", "-m", "/dev/zero", *key): "larger than 1 MiB",
        ("unbundle", "-m", str(fifo), *key): "not a regular file",
        ("unbundle", "-m", str(huge), *key): "is too large (67108864 bytes; at most 1 MiB)",
        ("unbundle", "-m", str(binary), *key): "not UTF-8",
        ("unbundle", "-m", str(latin1), *key): "not UTF-8",
        ("unbundle", "-m", str(tmp_path / "none.xml"), *key): "No such file",
        ("unbundle", "-m", good, "-k", str(binary)): "not an unencrypted RSA private key",
        ("unbundle", "-m", good, "-k", "/dev/zero"): "larger than 1 MiB",
        ("unbundle", "-m", good, "-k", str(pki.cert)): "not an unencrypted RSA",
        ("unbundle", "-m", good, *key, "-c", str(huge)): "user certificate",
        ("unbundle", "-m", good, *key, "-o", str(tmp_path)): "is a directory",
        ("bundle", "--image", "/a/path", *keys(pki)): "is not a stored image NAME[:VERSION]",
        ("bundle", "--image", "smallpayroll:x.y", "--images", str(tmp_path), *keys(pki)):
            "is not a version",
        ("bundle", "--disk", str(binary), "--cert", str(binary), "--privatekey",
         str(pki.key), "--ec2cert", str(pki.ec2_cert), "--user", "123456789012"):
            "not an X.509 certificate",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
        assert "Traceback" not in err[0]
