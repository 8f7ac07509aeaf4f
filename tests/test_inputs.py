"""builder/inputs.py: a file the user named is read bounded, or refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.inputs import read_input, read_text_input


def test_reads_a_small_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert read_input(tmp_path / "f", 3) == b"abc"


@pytest.mark.parametrize(("setup", "says"), [
    (lambda p: None, "cannot read user-data .*No such file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"x" * 11), r"too large \(11 bytes; at most 10 bytes\)"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
])
def test_refusals_name_the_file(tmp_path: Path, setup: object, says: str) -> None:
    path = tmp_path / "input"
    setup(path)  # type: ignore[operator]
    with pytest.raises(UserError, match=says) as err:
        read_input(path, 10, "user-data")
    assert str(path) in err.value.message


def test_a_device_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(UserError, match="/dev/zero is larger than 1 MiB"):
        read_input("/dev/zero", 1024 * 1024)


def test_non_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"ok\nab\xffc\n")
    with pytest.raises(UserError, match=r":2:3: file is not UTF-8 text \(byte 0xff\)"):
        read_text_input(path, 100)
