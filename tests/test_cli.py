"""The CLI boundary: usage errors exit 2, --help works, verbs are found."""

from __future__ import annotations

import pytest

from builder.cli import build_parser, main


def test_no_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-verb"]) == 2


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "amibake" in capsys.readouterr().out


def test_every_verb_takes_json_and_debug() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    for name, verb_parser in sub.choices.items():  # type: ignore[attr-defined]
        opts = {o for a in verb_parser._actions for o in a.option_strings}
        assert {"--json", "--debug"} <= opts, name


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`amibake schema | head -1`: the pipe closes early; no traceback."""
    import fcntl
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the output
    entry = "import sys; from builder.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", entry, "schema"], stdout=write_end,
                            stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.readline()
    err = proc.communicate(timeout=60)[1].decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
