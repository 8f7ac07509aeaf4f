"""A failed bake leaves nothing behind: no store entry, no staging or scratch
directory. Failures are injected for real: a debugfs (the tool that writes the
root filesystem) that fails, a boot test that fails, and SIGINT (Ctrl-C)
delivered to a running `amibake bake`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.bake import pipeline
from builder.bake.cache import default_cache_dir
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.proc import CommandError
from builder.store import Store, StoredImage
from tests.bake_fixture import ROOT, bake_options, copy_manifest
from tests.sigint import default_sigint

pytestmark = pytest.mark.bake


def _scratch_dirs() -> set[Path]:
    work = default_cache_dir() / "work"
    return set(work.iterdir()) if work.is_dir() else set()


def _assert_nothing_left(store_root: Path, scratch_before: set[Path]) -> None:
    store = Store(store_root)
    assert store.list() == []
    assert store.leftovers() == []
    if store_root.exists():
        assert [p for p in store_root.rglob("*") if p.is_file()] == []
    assert _scratch_dirs() - scratch_before == set()


def _fake_tool(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def _manifest(tmp_path: Path) -> Path:
    return copy_manifest(tmp_path, ("version: 1.0.0", "version: 9.9.9"))


def test_root_fs_failure_leaves_nothing(
    baked_image: StoredImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    _fake_tool(bindir, "debugfs", "echo 'debugfs: injected failure' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    before = _scratch_dirs()
    store_root = tmp_path / "images"
    with pytest.raises(CommandError, match="injected failure"):
        pipeline.bake(load_manifest(_manifest(tmp_path)), bake_options(store_root), say=print)
    _assert_nothing_left(store_root, before)


def test_boot_test_failure_leaves_nothing(
    baked_image: StoredImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def failing_boot_test(disk: Path, manifest: object, roles: object, workdir: Path) -> list:
        seen.append(disk)
        assert disk.stat().st_size == 4 * 2**30  # a whole disk exists while it is tested...
        assert Store(tmp_path / "images").list() == []  # ...but is not stored yet
        log = workdir / "web-uefi" / "serial.log"
        log.parent.mkdir(parents=True)
        log.write_text("nginx: [emerg] injected\n")
        seen.append(log)
        raise UserError(f"role web: nginx did not answer (serial log: {log})")

    monkeypatch.setattr(pipeline, "boot_test_disk", failing_boot_test)
    before = _scratch_dirs()
    store_root = tmp_path / "images"
    with pytest.raises(UserError, match="nginx did not answer"):
        pipeline.bake(load_manifest(_manifest(tmp_path)),
                      bake_options(store_root, skip_boot_test=False), say=print)
    disk, log = seen
    assert not disk.exists()
    _assert_nothing_left(store_root, before)
    # the failed boot's serial log is kept for reading (the error names it)
    assert log.read_text() == "nginx: [emerg] injected\n"
    assert log.parent.parent.parent == default_cache_dir() / "boot"
    shutil.rmtree(log.parent.parent)


def test_ctrl_c_during_the_bake_leaves_nothing(baked_image: StoredImage, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    started = tmp_path / "debugfs-started"
    _fake_tool(bindir, "debugfs", f"touch {started}\nexec sleep 60\n")
    store_root = tmp_path / "images"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               AMIBAKE_CACHE_DIR=str(default_cache_dir()))
    before = _scratch_dirs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "bake", str(_manifest(tmp_path)),
         "--skip-boot-test", "--store", str(store_root)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint,  # even when this run ignores SIGINT
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the bake never reached debugfs"
            time.sleep(0.1)
        assert list(store_root.glob("smallpayroll/.staging-*"))  # mid-bake: staged
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    _assert_nothing_left(store_root, before)


def test_a_half_built_tree_is_removed_without_going_through_its_mounts(tmp_path: Path) -> None:
    """mmdebstrap mounts /dev, /proc, /sys in the tree while it runs: removing a
    tree that still held one must unmount it, never delete through it."""
    from builder.bake.rootfs import mounts_under, remove_build_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host file")
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", outside, tree / "dev"], check=True)
    try:
        assert mounts_under(tree) == [tree / "dev"]
        remove_build_tree(tree)
    finally:
        subprocess.run(["umount", tree / "dev"], capture_output=True)
    assert not tree.exists()
    assert (outside / "precious").read_text() == "host file"
