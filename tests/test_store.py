"""The local image store: atomic commits, refusing/forcing, listing and pruning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from builder.cli import main
from builder.disk_digest import file_digest, matches
from builder.errors import UserError
from builder.store import DiskInfo, Store, StoredImage


def _image(name: str, version: str, digest: str = "sha256:aa") -> StoredImage:
    return StoredImage(
        dir=Path("/nonexistent"), id=f"img-{abs(hash((name, version, digest))) % 16**12:012x}",
        name=name, version=version, roles=("web", "db"), architecture="x86_64",
        boot_mode="uefi-preferred", volume_size_gib=4, inputs={"base_layer": digest},
        inputs_digest=digest, disk=DiskInfo("disk.raw", "sha256-blocks-512k:" + "00" * 32, 4096, 0),
        packages={"cloud-init": "22.4.2-1"}, build_time="2026-11-25T12:00:00Z",
        builder_version="0.1.0", boot_test={"skipped": True},
    )


def _put(store: Store, name: str, version: str, digest: str = "sha256:aa",
         *, replace: bool = False, payload: bytes = b"disk") -> StoredImage:
    with store.staging(name, version) as staged:
        (staged / "disk.raw").write_bytes(payload)
        return store.commit(staged, _image(name, version, digest), replace=replace)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".staging-", ".retired-"))]


def test_commit_moves_the_staged_entry_into_place(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    stored = _put(store, "app", "1.0.0")
    assert stored.dir == tmp_path / "images/app/1.0.0"
    assert (stored.dir / "disk.raw").read_bytes() == b"disk"
    doc = json.loads((stored.dir / "image.json").read_text())
    assert doc["name"] == "app" and doc["version"] == "1.0.0"
    assert doc["disk"] == {"file": "disk.raw", "digest": "sha256-blocks-512k:" + "00" * 32,
                           "apparent_size": 4096, "used_size": 0}
    assert store.get("app") == stored
    assert _leftovers(tmp_path) == []


def test_a_record_of_an_older_amibake_names_its_plain_sha256(tmp_path: Path) -> None:
    """image.json before the block digest had `sha256: <hex>`: read as `sha256:<hex>`,
    which `images verify` and publish check with the plain sha256."""
    store = Store(tmp_path / "images")
    stored = _put(store, "app", "1.0.0")
    record = stored.dir / "image.json"
    doc = json.loads(record.read_text())
    doc["disk"] = {"file": "disk.raw", "sha256": hashlib.sha256(b"disk").hexdigest(),
                   "apparent_size": 4, "used_size": 4096}
    record.write_text(json.dumps(doc))
    old = store.get("app")
    assert old.disk.digest == "sha256:" + hashlib.sha256(b"disk").hexdigest()
    assert matches(old.disk_path, old.disk.digest)
    (old.disk_path).write_bytes(b"disc")
    assert not matches(old.disk_path, old.disk.digest)


def test_a_failure_while_staging_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    with pytest.raises(RuntimeError), store.staging("app", "1.0.0") as staged:
        (staged / "disk.raw").write_bytes(b"half")
        raise RuntimeError("mkfs died")
    assert store.find("app", "1.0.0") is None
    assert list((tmp_path / "images/app").iterdir()) == []


def test_existing_version_is_refused_without_replace(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    _put(store, "app", "1.0.0", "sha256:aa")
    with pytest.raises(UserError, match="exists"):
        _put(store, "app", "1.0.0", "sha256:bb", payload=b"new")
    kept = store.get("app", "1.0.0")
    assert kept.inputs_digest == "sha256:aa"
    assert (kept.dir / "disk.raw").read_bytes() == b"disk"
    assert _leftovers(tmp_path) == []


def test_replace_swaps_the_entry(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    _put(store, "app", "1.0.0", "sha256:aa")
    _put(store, "app", "1.0.0", "sha256:bb", replace=True, payload=b"new")
    image = store.get("app", "1.0.0")
    assert image.inputs_digest == "sha256:bb"
    assert image.disk_path.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_versions_sort_as_versions_not_strings(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    for v in ("1.9.0", "1.10.0", "1.2.0"):
        _put(store, "app", v)
    assert [i.version for i in store.list("app")] == ["1.2.0", "1.9.0", "1.10.0"]
    assert store.get("app").version == "1.10.0"
    assert store.resolve("app:1.9.0").version == "1.9.0"
    assert store.resolve(store.get("app", "1.2.0").id).version == "1.2.0"
    with pytest.raises(UserError, match="have: 1.2.0, 1.9.0, 1.10.0"):
        store.get("app", "3.0.0")


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    for v in ("1.0.0", "1.1.0", "1.10.0", "2.0.0"):
        _put(store, "app", v)
    _put(store, "other", "0.1.0")
    removed = store.prune("app", 2)
    assert [i.version for i in removed] == ["1.0.0", "1.1.0"]
    assert [i.version for i in store.list("app")] == ["1.10.0", "2.0.0"]
    # keep=0 still keeps the newest
    store.prune("app", 0)
    assert [i.version for i in store.list("app")] == ["2.0.0"]
    assert [i.version for i in store.list("other")] == ["0.1.0"]
    assert _leftovers(tmp_path) == []


def test_list_ignores_staging_directories(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    _put(store, "app", "1.0.0")
    (tmp_path / "images/app/.staging-1.1.0-x").mkdir()
    assert [i.version for i in store.list()] == ["1.0.0"]
    assert store.leftovers() == [tmp_path / "images/app/.staging-1.1.0-x"]


def test_images_cli_list_inspect_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "images")
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        _put(store, "app", v)
    root = str(tmp_path / "images")
    assert main(["images", "--store", root, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [i["version"] for i in listed["images"]] == ["1.0.0", "1.1.0", "1.2.0"]
    assert main(["images", "--store", root, "inspect", "app", "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["version"] == "1.2.0" and inspected["packages"] == {"cloud-init": "22.4.2-1"}
    assert main(["images", "--store", root, "prune", "--keep", "1"]) == 0
    assert "removed app 1.0.0" in capsys.readouterr().out
    assert [i.version for i in store.list()] == ["1.2.0"]
    assert main(["images", "--store", root, "prune", "--keep", "0"]) == 1
    assert "--keep must be at least 1" in capsys.readouterr().err


def test_images_verify_hashes_the_disk_again(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "images")
    with store.staging("app", "1.0.0") as staged:
        (staged / "disk.raw").write_bytes(b"disk" * 200_000)
        image = dataclasses.replace(_image("app", "1.0.0"), disk=DiskInfo(
            "disk.raw", file_digest(staged / "disk.raw"), 800_000, 0))
        stored = store.commit(staged, image, replace=False)
    root = str(tmp_path / "images")
    assert main(["images", "--store", root, "verify", "app", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    with stored.disk_path.open("r+b") as f:
        f.seek(700_000)
        f.write(b"X")
    assert main(["images", "--store", root, "verify", "app:1.0.0"]) == 1
    assert "DIFFERS from image.json" in capsys.readouterr().out
