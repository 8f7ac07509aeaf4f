"""`amibake cache list|prune` on a damaged cache: one line each, never a traceback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from builder.bake.cache import LayerCache
from builder.cli import main


def _damaged(root: Path) -> Path:
    base = root / "base"
    base.mkdir(parents=True)
    (base / "bad.json").write_text("{not json")
    (base / "bad.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    (base / "list.json").write_text("[1, 2]")  # valid JSON, not a description
    (base / "list.tar.zst").write_bytes(b"")
    (base / "good.json").write_text(json.dumps({"kernel": "6.1", "created": "now"}))
    (base / "good.tar.zst").write_bytes(b"x" * 10)
    dangling = base / ".tmp-dangling"
    dangling.symlink_to(root / "gone")
    stale = time.time() - 7200
    os.utime(dangling, (stale, stale), follow_symlinks=False)
    (root / "work").mkdir()
    (root / "work" / "999999999-x").write_text("a file where a directory was expected")
    return base


def test_list_names_corrupt_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _damaged(tmp_path)
    assert main(["cache", "--cache-dir", str(tmp_path), "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in doc["layers"]] == ["good"]
    assert sorted(Path(p).name for p in doc["corrupt"]) == ["bad.tar.zst", "list.tar.zst"]


def test_prune_removes_corrupt_entries_and_dangling_leftovers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _damaged(tmp_path)
    target = tmp_path / "gone"
    assert main(["cache", "--cache-dir", str(tmp_path), "prune"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sorted(p.name for p in base.iterdir()) == ["good.json", "good.tar.zst"]
    assert not (tmp_path / "work" / "999999999-x").exists()
    assert not target.exists()


def test_unreadable_cache_dir_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base").write_text("a file where the layer directory should be")
    (tmp_path / "work").write_text("")
    code = main(["cache", "--cache-dir", str(tmp_path), "prune"])
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 1


def _root_fs(root: Path, key: str, used: float, meta: str | None = None) -> Path:
    rootfs = root / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    image = rootfs / f"{key}.ext4"
    image.write_bytes(b"\0" * 4096)
    if meta is None:
        meta = json.dumps({"key": key, "base_key": "b" * 64, "size": 4096})
    (rootfs / f"{key}.json").write_text(meta)
    os.utime(rootfs / f"{key}.json", (used, used))
    (rootfs / f"{key}.blocks").write_bytes(b"{}\n")  # its block digests
    return image


def test_root_filesystems_are_listed_and_pruned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    old = _root_fs(tmp_path, "old", now - 100)
    new = _root_fs(tmp_path, "new", now)
    broken = _root_fs(tmp_path, "broken", now + 10, meta="{not json")
    stale = tmp_path / "rootfs" / ".tmp-abc-dead"
    stale.mkdir()
    os.utime(stale, (now - 7200, now - 7200))
    stray = tmp_path / "rootfs" / "gone.blocks"  # its image was removed by hand
    stray.write_bytes(b"{}\n")
    assert main(["cache", "--cache-dir", str(tmp_path), "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in doc["root_fs"]] == ["new", "old", "broken"]
    assert doc["root_fs"][0]["base_key"] == "b" * 64
    assert main(["cache", "--cache-dir", str(tmp_path), "list"]) == 0
    assert "rootfs new" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(tmp_path), "prune", "--keep", "1"]) == 0
    assert new.exists() and new.with_suffix(".json").exists()
    assert new.with_suffix(".blocks").exists()
    assert not old.exists() and not old.with_suffix(".json").exists()
    assert not old.with_suffix(".blocks").exists() and not stray.exists()
    assert not broken.exists() and not stale.exists()


def test_a_finished_bakes_tree_is_removed_in_the_background(tmp_path: Path) -> None:
    """The bake returns at once; the tree leaves its workdir (which a bake's end
    removes) under a name `cache prune` knows, and a detached rm takes it."""
    cache = LayerCache(tmp_path)
    with cache.workdir() as work:
        tree = work / "tree"
        for n in range(200):
            (tree / f"d{n % 7}").mkdir(parents=True, exist_ok=True)
            (tree / f"d{n % 7}" / f"f{n}").write_text("x")
        doomed = cache.remove_later(tree)
        assert not tree.exists()
        # the rm may be done already (a fresh-clone run saw it finish first)
        assert doomed.parent == cache.work_root and "-removing-" in doomed.name
        assert doomed.name.startswith(f"{os.getpid()}-")
    deadline = time.monotonic() + 30
    while doomed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not doomed.exists() and list(cache.work_root.iterdir()) == []
