"""amibake's cache directory: code identities and the disk memo (builder/cache_dir.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import builder
from builder.cache_dir import DiskMemo, code_identity
from builder.render import base
from builder.render.docstrings import is_python_script, strip_docstrings
from builder.render.inline import inline_modules


def test_code_identity_follows_each_file_and_the_label(tmp_path: Path) -> None:
    files = [tmp_path / "a.py", tmp_path / "b.json"]
    for f in files:
        f.write_text("x")
        os.utime(f, ns=(10**18, 10**18))
    first = code_identity("memo", files)
    assert first is not None and first == code_identity("memo", files)
    assert code_identity("other", files) != first
    os.utime(files[1], ns=(2 * 10**18, 2 * 10**18))
    assert code_identity("memo", files) != first
    files[0].unlink()
    assert code_identity("memo", files) is None


def test_memo_round_trip_and_a_new_identity_misses(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMIBAKE_CACHE_DIR", str(tmp_path / "cache"))
    code = tmp_path / "code.py"
    code.write_text("v1")
    memo = DiskMemo("t", [code])
    assert memo.get(b"input") is None
    memo.put(b"input", b"result")
    assert DiskMemo("t", [code]).get(b"input") == b"result"
    assert DiskMemo("t", [code]).get(b"other input") is None
    code.write_text("v2, longer")  # the code changed: old results are never read
    assert DiskMemo("t", [code]).get(b"input") is None


def test_memo_without_its_code_or_a_writable_cache_computes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("AMIBAKE_CACHE_DIR", str(blocked))
    memo = DiskMemo("t", [Path(base.__file__)])
    memo.put(b"x", b"y")  # no error
    assert memo.get(b"x") is None
    missing = DiskMemo("t", [tmp_path / "gone.py"])
    missing.put(b"x", b"y")
    assert missing.get(b"x") is None


def test_shipped_scripts_from_the_memo_equal_the_stripped_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMIBAKE_CACHE_DIR", str(tmp_path / "cache"))
    base._shipping_memo.cache_clear()
    boot = builder.TEMPLATES_DIR / "boot"
    scripts = [p for p in sorted(boot.rglob("*")) if p.is_file()
               and is_python_script(p.read_bytes())]
    assert scripts
    try:
        for path in scripts:
            origin = f"cloudinit/boot/{path.relative_to(boot).as_posix()}"
            want = strip_docstrings(inline_modules(path.read_text(), boot, origin),
                                    origin).encode()
            assert base._shipped(path.read_bytes(), boot, origin) == want  # computed, kept
            assert base._shipping_memo().get(
                f"{origin}\n{inline_modules(path.read_text(), boot, origin)}".encode()) == want
            assert base._shipped(path.read_bytes(), boot, origin) == want  # read back
    finally:
        base._shipping_memo.cache_clear()
