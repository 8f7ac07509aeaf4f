"""bump_version: only the version's bytes change; everything else stays byte-identical."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from packaging.version import Version

from builder.errors import UserError
from builder.manifest import bump_version, load_manifest
from builder.manifest.bump import next_version

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"


@pytest.mark.parametrize("current, part, new", [
    ("1.0.0", "patch", "1.0.1"),
    ("1.0.9", "patch", "1.0.10"),
    ("1.4.2", "minor", "1.5.0"),
    ("1.4.2", "major", "2.0.0"),
    ("1.2", "patch", "1.2.1"),
    ("1.2", "minor", "1.3"),
    ("3", "major", "4"),
    ("3", "minor", "3.1"),
    ("1.2.0rc1", "patch", "1.2.1"),
    ("1.2.0.post3", "minor", "1.3.0"),
    ("1.2.3+local", "patch", "1.2.4"),
    ("2!1.0.0", "major", "2!2.0.0"),
])
def test_next_version(current: str, part: str, new: str) -> None:
    assert next_version(Version(current), part) == Version(new)
    assert str(next_version(Version(current), part)) == new


def test_unknown_part() -> None:
    with pytest.raises(UserError):
        next_version(Version("1.0.0"), "micro")


@pytest.mark.parametrize("part, new", [("patch", "1.0.1"), ("minor", "1.1.0"), ("major", "2.0.0")])
def test_bump_seed_changes_only_the_version(tmp_path: Path, part: str, new: str) -> None:
    path = tmp_path / "smallpayroll.yaml"
    shutil.copy(SEED, path)
    before = path.read_bytes()
    assert before.count(b"\nversion: 1.0.0\n") == 1
    assert bump_version(path, part) == Version(new)
    after = before.replace(b"\nversion: 1.0.0\n", f"\nversion: {new}\n".encode())
    assert path.read_bytes() == after
    assert load_manifest(path).version == Version(new)


def _bump(tmp_path: Path, text: bytes, part: str = "patch") -> bytes:
    path = tmp_path / "m.yaml"
    path.write_bytes(text)
    bump_version(path, part)
    return path.read_bytes()


@pytest.mark.parametrize("before, after", [
    (b'name: x\nversion: "1.2.3"  # quoted\nz: 1\n',
     b'name: x\nversion: "1.2.4"  # quoted\nz: 1\n'),
    (b"version: '1.2.3'\n", b"version: '1.2.4'\n"),
    (b"a: 1\r\nversion: 1.2.3\r\nb: [version: 9.9.9]\r\n",
     b"a: 1\r\nversion: 1.2.4\r\nb: [version: 9.9.9]\r\n"),
    (b"{name: x, version: 1.2.3, note: caf\xc3\xa9}",
     b"{name: x, version: 1.2.4, note: caf\xc3\xa9}"),
    (b"\xef\xbb\xbf# caf\xc3\xa9\nversion: 1.2.3", b"\xef\xbb\xbf# caf\xc3\xa9\nversion: 1.2.4"),
    (b"nested:\n  version: 0.0.1\nversion:   7.1\n",
     b"nested:\n  version: 0.0.1\nversion:   7.1.1\n"),
])
def test_bump_keeps_every_other_byte(tmp_path: Path, before: bytes, after: bytes) -> None:
    assert _bump(tmp_path, before) == after


@pytest.mark.parametrize("text, message", [
    (b"name: x\n", "no top-level `version:` key"),
    (b"version: banana\n", "version 'banana' is not a PEP 440 version"),
    (b"version:\n", "version must be a one-line scalar such as 1.2.0"),
    (b"version: [1, 2]\n", "version must be a one-line scalar such as 1.2.0"),
    (b"version: |\n  1.2.3\n", "version must be a one-line scalar such as 1.2.0"),
    (b"- 1\n", "the top level is not a mapping"),
    (b"version: [1.2.3\n", "invalid YAML: "),
    (b"version: \xff\n", "not UTF-8 text"),
])
def test_bump_refuses_and_leaves_the_file_alone(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError) as info:
        bump_version(path, "patch")
    assert info.value.problems[0].message.startswith(message)
    assert info.value.problems[0].location.file == str(path)
    assert path.read_bytes() == text
    assert os.listdir(tmp_path) == ["m.yaml"]


def test_bump_keeps_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"version: 1.0.0\n")
    path.chmod(0o640)
    bump_version(path, "minor")
    assert path.stat().st_mode & 0o7777 == 0o640
    assert os.listdir(tmp_path) == ["m.yaml"]
    assert path.read_bytes() == b"version: 1.1.0\n"
