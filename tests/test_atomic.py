"""builder/atomic.py: the one atomic, symlink-safe file replacement."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder.atomic import open_private, write_atomically


def test_new_file_gets_default_mode_and_content(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    write_atomically(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["doc.json"]


def test_replacement_keeps_the_old_mode_unless_told(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("old")
    target.chmod(0o600)
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    write_atomically(target, b"newer", mode=0o640)
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_text("old")

    with pytest.raises(TypeError):
        write_atomically(target, 12345)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state"]


def test_a_symlink_at_the_path_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    link = tmp_path / "out"
    link.symlink_to(victim)
    write_atomically(link, "mine")
    assert victim.read_text() == "untouched"
    assert not link.is_symlink() and link.read_text() == "mine"


def test_open_private_refuses_a_planted_symlink_and_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "planted").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        open_private(tmp_path / "planted")
    with pytest.raises(FileExistsError):
        open_private(tmp_path / "target")
    fd = open_private(tmp_path / "fresh")
    os.close(fd)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o600


def test_sync_dir_false_fsyncs_the_data_not_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[bool] = []  # True: a directory
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "state.json"
    write_atomically(path, "one", mode=0o600)
    assert synced == [False, True]
    synced.clear()
    write_atomically(path, "two", mode=0o600, sync_dir=False)
    assert synced == [False] and path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
