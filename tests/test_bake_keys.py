"""Layer cache keys: what invalidates the base layer, the config layer, the disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.bake import rootfs
from builder.bake.cache import LayerCache
from builder.bake.pipeline import recipe_for, with_roles
from builder.bake.sources import host_sources, release_mirror
from builder.errors import UserError
from builder.manifest import load_manifest
from tests.bake_fixture import SEED_MANIFEST, copy_manifest


def _plan(path: Path):  # type: ignore[no-untyped-def]
    return recipe_for(load_manifest(path))


def test_same_manifest_same_keys(tmp_path: Path) -> None:
    a = _plan(SEED_MANIFEST)
    b = _plan(copy_manifest(tmp_path))
    assert a.inputs == b.inputs and a.inputs_digest == b.inputs_digest
    assert a.image_id == b.image_id and a.image_id.startswith("img-") and len(a.image_id) == 16


def test_one_role_config_change_changes_only_the_config_layer(tmp_path: Path) -> None:
    before = _plan(SEED_MANIFEST)
    after = _plan(copy_manifest(tmp_path, ("retry_after: 300", "retry_after: 120")))
    changed = {k for k in before.inputs if before.inputs[k] != after.inputs[k]}
    assert changed == {"config_layer"}
    assert before.base.key() == after.base.key()
    assert before.inputs_digest != after.inputs_digest


def test_an_extra_package_changes_the_base_layer(tmp_path: Path) -> None:
    before = _plan(SEED_MANIFEST)
    after = _plan(copy_manifest(
        tmp_path, ("  login_user: admin\n", "  login_user: admin\n  packages: [less]\n")))
    assert "less" in after.base.packages
    assert before.inputs["base_layer"] != after.inputs["base_layer"]
    assert before.base.root_uuid() != after.base.root_uuid()


def test_volume_size_changes_only_the_disk(tmp_path: Path) -> None:
    before = _plan(SEED_MANIFEST)
    after = _plan(copy_manifest(tmp_path, ("volume_size_gib: 4", "volume_size_gib: 6")))
    changed = {k for k in before.inputs if before.inputs[k] != after.inputs[k]}
    assert changed == {"disk"}


def test_version_is_not_an_input_of_the_layers(tmp_path: Path) -> None:
    before = _plan(SEED_MANIFEST)
    after = _plan(copy_manifest(tmp_path, ("version: 1.0.0", "version: 1.0.1")))
    assert before.inputs["base_layer"] == after.inputs["base_layer"]
    assert after.version == "1.0.1"


def test_roles_subset_changes_roles_and_config(tmp_path: Path) -> None:
    manifest = load_manifest(SEED_MANIFEST)
    full = recipe_for(manifest)
    web = recipe_for(with_roles(manifest, ["web"]))
    assert web.roles == ("web",)
    assert web.inputs["roles"] != full.inputs["roles"]
    assert web.inputs["config_layer"] != full.inputs["config_layer"]
    with pytest.raises(UserError, match="unknown role"):
        with_roles(manifest, ["nosuch"])


def test_base_key_follows_hooks_and_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _plan(SEED_MANIFEST).base
    key = spec.key()
    monkeypatch.setattr(rootfs, "SETUP_HOOK", rootfs.SETUP_HOOK + "# changed\n")
    assert spec.key() != key
    monkeypatch.undo()
    other_sources = tmp_path / "other.sources"
    other_sources.write_text(spec.sources[0].read_text() + "\n# another snapshot\n")
    assert rootfs.BaseSpec(spec.distro, spec.release, spec.architecture, spec.packages,
                           (other_sources,)).key() != key


def test_host_sources_are_read_from_apt(tmp_path: Path) -> None:
    found = host_sources("bookworm")
    assert found and all(p.is_file() for p in found)
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/x.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: trixie\nComponents: main\n")
    with pytest.raises(UserError, match="no `deb` entry for bookworm"):
        host_sources("bookworm", apt)
    (apt / "sources.list.d/y.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb-src\nSuites: bookworm\n")
    assert host_sources("bookworm", apt) == (apt / "sources.list.d/y.sources",)
    assert release_mirror("bookworm", apt) == "http://mirror.invalid/debian"
    (apt / "sources.list").write_text(
        "deb [arch=amd64] http://one.invalid/debian bookworm main\n")
    assert host_sources("bookworm", apt)[0] == apt / "sources.list"
    assert release_mirror("bookworm", apt) == "http://one.invalid/debian"


def test_cache_prune_keeps_recent_and_drops_dead_workdirs(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("localhost\n")
    old = cache.store("a" * 64, tree, {"created": "old"})
    new = cache.store("b" * 64, tree, {"created": "new"})
    import os

    os.utime(cache._meta_path(old.key), (1, 1))
    assert [e.key for e in cache.entries()] == [new.key, old.key]
    dead = cache.work_root / "999999999-x"
    dead.mkdir(parents=True)
    with cache.workdir() as live:
        removed = cache.prune(1)
        assert live.exists()
    assert old.archive in removed and dead in removed
    assert [e.key for e in cache.entries()] == [new.key]
    out = tmp_path / "out"
    cache.extract(new, out)
    assert (out / "etc/hostname").read_text() == "localhost\n"


def test_cache_cli_list_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from builder.cli import main

    cache = LayerCache(tmp_path / "cache")
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    cache.store("c" * 64, tree, {"created": "2026-11-25T00:00:00Z", "kernel": "6.1.0-x",
                                 "packages_requested": ["systemd"]})
    assert main(["cache", "--cache-dir", str(cache.root), "list", "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [(entry["key"], entry["kernel"]) for entry in layers] == [("c" * 64, "6.1.0-x")]
    assert main(["cache", "--cache-dir", str(cache.root), "prune", "--keep", "0"]) == 0
    assert "removed" in capsys.readouterr().out
    assert cache.entries() == []
    assert list(cache.base_dir.iterdir()) == []
