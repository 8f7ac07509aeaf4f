"""The real bake of the seed manifest (session fixture `baked_image`), then
no-op, refused and forced rebuilds, a config-only rebuild and --bump."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from builder.bake import rootfs
from builder.bake.pipeline import bake, recipe_for
from builder.cli import main
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.store import Store, StoredImage
from tests.bake_fixture import SEED_MANIFEST, bake_options, copy_manifest

pytestmark = pytest.mark.bake


def _partitions(disk: Path) -> dict[int, dict]:
    out = subprocess.run(["sfdisk", "--json", disk], check=True, capture_output=True,
                         text=True).stdout
    parts = json.loads(out)["partitiontable"]["partitions"]
    return {int(p["node"].removeprefix(str(disk))): p for p in parts}


def _root(image: StoredImage) -> str:
    return f"{image.disk_path}?offset={_partitions(image.disk_path)[1]['start'] * 512}"


def _debugfs(image: StoredImage, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, _root(image)], check=True,
                          capture_output=True, text=True).stdout


def _cat(image: StoredImage, path: str) -> str:
    return _debugfs(image, f"cat {path}")


def _exists(image: StoredImage, path: str) -> bool:
    proc = subprocess.run(["debugfs", "-R", f"stat {path}", _root(image)],
                          capture_output=True, text=True)
    return "File not found" not in proc.stderr and "Inode:" in proc.stdout


def test_image_record(baked_image: StoredImage) -> None:
    image = baked_image
    doc = json.loads((image.dir / "image.json").read_text())
    assert doc["name"] == "smallpayroll" and doc["version"] == "1.0.0"
    assert doc["id"].startswith("img-") and len(doc["id"]) == 16
    assert doc["roles"] == ["web", "app", "db", "all-in-one"]
    # the seed bakes its own app (the Rails sample by path:): its tree and layer are inputs
    assert set(doc["inputs"]) == {"base_layer", "config_layer", "disk", "roles", "app",
                                  "app_layer"}
    assert all(v.startswith("sha256:") for v in doc["inputs"].values())
    assert doc["inputs_digest"] == recipe_for(load_manifest(SEED_MANIFEST)).inputs_digest
    disk = image.disk_path
    assert doc["disk"]["apparent_size"] == disk.stat().st_size == 4 * 2**30
    # the data, holes left out; st_blocks adds the file's extent tree
    assert doc["disk"]["used_size"] <= disk.stat().st_blocks * 512 < \
        doc["disk"]["used_size"] + 2**20
    assert doc["disk"]["used_size"] < 2**30
    top = hashlib.sha256()  # README's definition of the digest, every byte read
    with disk.open("rb") as f:
        while block := f.read(512 * 1024):
            top.update(hashlib.sha256(block).digest())
    assert doc["disk"]["digest"] == "sha256-blocks-512k:" + top.hexdigest()
    for pkg in ("cloud-init", "linux-image-cloud-amd64", "nginx-light", "postgresql-15",
                "puma", "ruby-pg", "ruby-rack", "openssh-server", "cloud-guest-utils"):
        assert pkg in doc["packages"], pkg
    assert doc["build_time"].endswith("Z")
    assert doc["boot_test"] == {"skipped": True}  # the boot tests boot this very disk


def test_disk_layout_and_root_identity(baked_image: StoredImage) -> None:
    parts = _partitions(baked_image.disk_path)
    assert parts[14]["type"] == "21686148-6449-6E6F-744E-656564454649"
    assert parts[15]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    probe = subprocess.run(
        ["blkid", "-p", "-O", str(parts[1]["start"] * 512), "-o", "export",
         baked_image.disk_path], check=True, capture_output=True, text=True).stdout
    fs = dict(line.split("=", 1) for line in probe.splitlines())
    assert fs["TYPE"] == "ext4" and fs["LABEL"] == rootfs.ROOT_LABEL
    fstab = _cat(baked_image, "/etc/fstab")
    assert fstab.split()[0] == f"UUID={fs['UUID']}"
    grub = _cat(baked_image, "/boot/grub/grub.cfg")
    assert f"root=UUID={fs['UUID']}" in grub and "console=ttyS0,115200" in grub


def test_no_instance_identity_is_baked(baked_image: StoredImage) -> None:
    assert _debugfs(baked_image, "ls -l /etc/ssh").count("ssh_host_") == 0
    assert _cat(baked_image, "/etc/machine-id") == ""
    assert not _exists(baked_image, "/var/lib/systemd/random-seed")
    # ssl-cert's pair would be one TLS key for every instance's PostgreSQL
    assert not _exists(baked_image, "/etc/ssl/private/ssl-cert-snakeoil.key")
    assert not _exists(baked_image, "/etc/ssl/certs/ssl-cert-snakeoil.pem")
    assert not _exists(baked_image, "/var/lib/cloud/instance")
    # no PostgreSQL cluster in the image: the db role makes one on /mnt at boot
    assert "create_main_cluster = false" in _cat(
        baked_image, "/etc/postgresql-common/createcluster.conf")
    assert not _exists(baked_image, "/var/lib/postgresql/15/main")
    assert not _exists(baked_image, "/etc/postgresql/15/main")


def test_rendered_files_and_units(baked_image: StoredImage) -> None:
    from builder.render import image_content

    content = image_content(load_manifest(SEED_MANIFEST))
    for f in content.files:
        assert _cat(baked_image, f.path).encode() == f.content, f.path
    wants = _debugfs(baked_image, "ls /etc/systemd/system/multi-user.target.wants")
    assert "amibake-dispatch.service" in wants
    assert "nginx.service" not in wants and "postgresql.service" not in wants
    assert "app:" in _cat(baked_image, "/etc/passwd")  # sysusers.d ran at bake time
    cfg = _cat(baked_image, "/etc/cloud/cloud.cfg.d/91_amibake-image.cfg")
    assert "name: admin" in cfg
    # cloud-init leaves the instance store to the PostgreSQL setup script
    assert "mounts:\n  - [ephemeral0]" in _cat(
        baked_image, "/etc/cloud/cloud.cfg.d/90_amibake.cfg")


def test_login_user_is_baked_with_its_home(baked_image: StoredImage) -> None:
    """The dispatcher runs beside cloud-init.service at first boot: the login
    user it gives the instance's key to is in the image, not made by cloud-init."""
    passwd = {line.split(":")[0]: line.split(":") for line in
              _cat(baked_image, "/etc/passwd").splitlines()}
    assert passwd["admin"][2:4] == ["1000", "1000"]
    assert passwd["admin"][5:7] == ["/home/admin", "/bin/bash"]
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              _cat(baked_image, "/etc/group").splitlines()}
    assert "admin" in groups["sudo"] and "admin" in groups["adm"]
    shadow = {line.split(":")[0]: line.split(":")[1] for line in
              _cat(baked_image, "/etc/shadow").splitlines()}
    assert shadow["admin"].startswith("!")  # no password login
    home = _debugfs(baked_image, "stat /home/admin")
    assert "User:  1000" in home and "Mode:  0700" in home
    assert ".bashrc" in _debugfs(baked_image, "ls /home/admin")
    assert not _exists(baked_image, "/home/admin/.ssh")  # no key until an instance boots


def test_the_bake_never_writes_into_the_cached_layer(baked_image: StoredImage) -> None:
    """The bake's tree is hard links into the cached tree: config files must be
    replaced, never written into, or the cache would carry one bake's config."""
    from builder.bake.cache import default_cache_dir

    key = baked_image.inputs["base_layer"].removeprefix("sha256:")
    cached = default_cache_dir() / "base" / f"{key}.tree"
    assert cached.is_dir()
    assert not (cached / "boot/grub/grub.cfg").exists()
    assert not (cached / "etc/amibake").exists()
    assert "\napp:" not in "\n" + (cached / "etc/passwd").read_text()
    assert "\nadmin:" not in "\n" + (cached / "etc/passwd").read_text()
    assert not (cached / "home/admin").exists()
    assert (cached / "etc/systemd/system/multi-user.target.wants/nginx.service").is_symlink()
    assert not (cached / "etc/systemd/system/amibake-dispatch.service").exists()
    packaged = (cached / "etc/nginx/nginx.conf").read_text()
    assert "amibake" not in packaged


def test_unchanged_manifest_is_a_no_op(baked_image: StoredImage) -> None:
    store_root = baked_image.dir.parent.parent
    mtime = baked_image.disk_path.stat().st_mtime_ns
    result = bake(load_manifest(SEED_MANIFEST), bake_options(store_root), say=print)
    assert result.action == "unchanged"
    assert result.image == baked_image
    assert baked_image.disk_path.stat().st_mtime_ns == mtime
    assert Store(store_root).leftovers() == []


def test_changed_inputs_same_version_refused_then_forced(
    baked_image: StoredImage, tmp_path: Path
) -> None:
    store_root = tmp_path / "images"
    manifest = load_manifest(SEED_MANIFEST)
    first = bake(manifest, bake_options(store_root), say=print)
    assert first.action == "built" and first.base_cached
    changed = load_manifest(copy_manifest(tmp_path, ("retry_after: 300", "retry_after: 120")))
    with pytest.raises(UserError, match="already stored with different inputs") as err:
        bake(changed, bake_options(store_root), say=print)
    assert "--force" in err.value.hint
    assert Store(store_root).get("smallpayroll").inputs_digest == first.image.inputs_digest
    forced = bake(changed, bake_options(store_root, force=True), say=print)
    assert forced.action == "replaced" and forced.base_cached
    assert forced.image.inputs["base_layer"] == first.image.inputs["base_layer"]
    assert forced.image.inputs["config_layer"] != first.image.inputs["config_layer"]
    assert "Retry-After 120 always" in _cat(forced.image, "/etc/nginx/nginx.conf")
    assert [i.version for i in Store(store_root).list()] == ["1.0.0"]
    assert Store(store_root).leftovers() == []


def test_bake_cli_bump_writes_the_version_back(
    baked_image: StoredImage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = copy_manifest(tmp_path)
    before = manifest.read_text()
    store_root = tmp_path / "images"
    code = main(["bake", str(manifest), "--bump", "minor", "--skip-boot-test",
                 "--store", str(store_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "version: 1.1.0" in out and "id:      img-" in out and str(store_root) in out
    assert manifest.read_text() == before.replace("version: 1.0.0", "version: 1.1.0", 1)
    image = Store(store_root).get("smallpayroll")
    assert image.version == "1.1.0"
    assert '"manifest_version": "1.1.0"' in _cat(image, "/etc/amibake/roles.json")
    # the JSON result of a no-op bake of the bumped manifest names the same image
    assert main(["bake", str(manifest), "--skip-boot-test", "--store", str(store_root),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["action"] == "unchanged" and doc["id"] == image.id
    assert doc["path"] == str(image.dir)


def test_target_aws_hands_the_stored_image_to_the_publisher(
    baked_image: StoredImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No AWS account: the publisher is reached and says it published nothing.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store_root = baked_image.dir.parent.parent
    assert main(["bake", str(SEED_MANIFEST), "--skip-boot-test", "--store", str(store_root),
                 "--target", "aws", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["action"] == "unchanged" and doc["id"] == baked_image.id
    assert doc["publish"]["published"] is False
    assert doc["publish"]["image_dir"] == str(baked_image.dir)
