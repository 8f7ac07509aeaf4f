"""The purge of the build-only packages, recorded once per base layer and replayed
(builder.bake.purge_cache), on hard-linked checkouts of a small base tree.

The purge here stands in for `apt-get purge` (which needs a Debian tree) and
changes the tree the ways dpkg does: files and a whole directory removed, a
file replaced by rename (dpkg's status), new files and a new directory (logs),
a directory's mode changed. A replay on a fresh checkout must give the tree
the real purge gives, entry by entry (the times the bake clamps aside); a
tree the purge would find otherwise (the config layer replaced a file the
purge removes, or wrote into a directory it removes) is not replayed on: the
purge runs instead.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from builder.app import rails_build
from builder.bake import purge_cache
from builder.bake.cache import LayerCache
from builder.bake.disk import FS_TIME

BASE_KEY = "b" * 64


def _base(root: Path) -> Path:
    base = root / "base"
    for rel, data in {
        "usr/bin/gcc-12": b"compiler", "usr/bin/ruby": b"ruby",
        "usr/include/stdio.h": b"header", "usr/include/sys/types.h": b"header",
        "var/lib/dpkg/status": b"Package: gcc-12\nStatus: installed\n",
        "var/lib/dpkg/info/gcc-12.list": b"/usr/bin/gcc-12\n",
        "etc/nginx/nginx.conf": b"packaged\n",
    }.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    os.symlink("gcc-12", base / "usr/bin/cc")
    (base / "var/log").mkdir(parents=True)
    return base


def _checkout(base: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--link", base, dest], check=True)
    return dest


def fake_purge(tree: Path, manifest: object = None) -> list[str]:
    """What `apt-get purge` does to a tree, done the way dpkg does it."""
    for rel in ("usr/bin/gcc-12", "usr/bin/cc", "var/lib/dpkg/info/gcc-12.list"):
        (tree / rel).unlink()
    for rel in ("usr/include/sys/types.h", "usr/include/stdio.h"):
        (tree / rel).unlink()
    (tree / "usr/include/sys").rmdir()
    (tree / "usr/include").rmdir()
    new = tree / "var/lib/dpkg/status-new"
    new.write_bytes(b"Package: gcc-12\nStatus: not-installed\n")
    os.replace(new, tree / "var/lib/dpkg/status")
    (tree / "var/log/apt").mkdir()
    (tree / "var/log/apt/history.log").write_text("Purge: gcc-12\n")
    os.link(tree / "var/log/apt/history.log", tree / "var/log/apt/history.log.1")
    (tree / "var/log/dpkg.log").write_text("remove gcc-12\n")
    (tree / "var/lib/dpkg").chmod(0o750)
    return ["gcc-12"]


def _listing(tree: Path) -> dict[str, tuple[object, ...]]:
    """Every entry: type, mode, owner, content or target, the paths of the tree
    that share its inode, and for a directory its mtime as the bake writes it
    (clamped to FS_TIME)."""
    out: dict[str, tuple[object, ...]] = {}
    by_ino: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = "/" + str(path.relative_to(tree))
            if stat.S_ISDIR(st.st_mode):
                body: object = min(st.st_mtime_ns // 10**9, FS_TIME)
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            else:
                body = path.read_bytes()
                by_ino.setdefault(st.st_ino, []).append(rel)
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, body)
    for paths in by_ino.values():
        for rel in paths:
            out[rel] += (sorted(paths),)
    return out


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, LayerCache, list[int]]:
    calls: list[int] = []

    def counted(tree: Path, manifest: object = None) -> list[str]:
        calls.append(1)
        return fake_purge(tree)

    monkeypatch.setattr(rails_build, "purge_build_packages", counted)
    return _base(tmp_path), LayerCache(tmp_path / "cache"), calls


def _purged(base: Path, cache: LayerCache, tmp: Path, name: str) -> tuple[Path, bool]:
    tree = _checkout(base, tmp / name)
    scratch = tmp / f"scratch-{name}"
    scratch.mkdir()
    replayed = purge_cache.purge(tree, None, BASE_KEY, cache, scratch)  # type: ignore[arg-type]
    assert not any(scratch.iterdir())  # the copy of the tree before the purge is gone
    return tree, replayed


def test_a_replay_gives_the_tree_the_purge_gives(
        tmp_path: Path, setup: tuple[Path, LayerCache, list[int]]) -> None:
    base, cache, calls = setup
    first, replayed = _purged(base, cache, tmp_path, "first")
    assert not replayed and len(calls) == 1
    second, replayed = _purged(base, cache, tmp_path, "second")
    assert replayed and len(calls) == 1  # no purge ran
    reference = _checkout(base, tmp_path / "reference")
    fake_purge(reference)
    kept = cache.purge_delta(purge_cache.purge_key(BASE_KEY))
    assert kept is not None
    assert _listing(second) == _listing(reference) == _listing(first)
    assert (second / "var/log/apt/history.log").stat().st_ino == \
        (second / "var/log/apt/history.log.1").stat().st_ino
    assert stat.S_IMODE((second / "var/lib/dpkg").stat().st_mode) == 0o750
    assert (base / "usr/bin/gcc-12").exists()  # the base tree is untouched


def test_a_tree_the_purge_would_find_otherwise_is_purged_again(
        tmp_path: Path, setup: tuple[Path, LayerCache, list[int]]) -> None:
    base, cache, calls = setup
    _purged(base, cache, tmp_path, "first")
    # the config layer replaced a file the purge removes: no replay
    tree = _checkout(base, tmp_path / "replaced")
    (tree / "var/lib/dpkg/info/gcc-12.list").unlink()
    (tree / "var/lib/dpkg/info/gcc-12.list").write_bytes(b"/usr/bin/gcc-12\n")
    assert not purge_cache.replay(cache.purge_delta(purge_cache.purge_key(BASE_KEY)), tree)
    assert (tree / "usr/bin/gcc-12").exists()  # declined before changing anything
    # it wrote into a directory the purge removes: no replay either
    tree = _checkout(base, tmp_path / "wrote")
    (tree / "usr/include/sys/extra.h").write_bytes(b"mine")
    assert not purge_cache.replay(cache.purge_delta(purge_cache.purge_key(BASE_KEY)), tree)
    # a change elsewhere does not stop a replay
    tree = _checkout(base, tmp_path / "third")
    (tree / "usr/bin/ruby").unlink()
    assert purge_cache.replay(cache.purge_delta(purge_cache.purge_key(BASE_KEY)), tree)
    # a bake on a tree the purge would find otherwise runs the purge
    calls.clear()
    tree = _checkout(base, tmp_path / "replaced-again")
    (tree / "var/lib/dpkg/info/gcc-12.list").unlink()
    (tree / "var/lib/dpkg/info/gcc-12.list").write_bytes(b"/usr/bin/gcc-12\n")
    scratch = tmp_path / "scratch-replaced-again"
    scratch.mkdir()
    assert not purge_cache.purge(tree, None, BASE_KEY, cache, scratch)  # type: ignore[arg-type]
    assert calls == [1] and not (tree / "usr/bin/gcc-12").exists()


def test_another_base_layer_has_its_own_purge(
        tmp_path: Path, setup: tuple[Path, LayerCache, list[int]]) -> None:
    base, cache, calls = setup
    _purged(base, cache, tmp_path, "first")
    assert purge_cache.purge_key(BASE_KEY) != purge_cache.purge_key("c" * 64)
    tree = _checkout(base, tmp_path / "other")
    scratch = tmp_path / "scratch-other"
    scratch.mkdir()
    assert not purge_cache.purge(tree, None, "c" * 64, cache, scratch)  # type: ignore[arg-type]
    assert len(calls) == 2
    assert {p.name for p in cache.purge_entries()} == {
        purge_cache.purge_key(BASE_KEY) + ".purge", purge_cache.purge_key("c" * 64) + ".purge"}
    assert cache.prune(keep=1)
    assert len(cache.purge_entries()) == 1
