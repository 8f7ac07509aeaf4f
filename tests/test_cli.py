"""The CLI boundary: usage errors exit 2, --help works, verbs are found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


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


def _raising(exc: BaseException) -> object:
    def run(args: object, out: object) -> int:
        raise exc
    return run


def _client_error() -> BaseException:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "AccessDenied", "Message": "not\nallowed"}},
                       "RegisterImage")


def _no_credentials() -> BaseException:
    from botocore.exceptions import NoCredentialsError

    return NoCredentialsError()


@pytest.mark.parametrize(("make", "says"), [
    (lambda: PermissionError(13, "Permission denied", "/etc/x\nforged line"),
     "'/etc/x\\nforged line': Permission denied"),
    (lambda: IsADirectoryError(21, "Is a directory", "/tmp"), "/tmp: Is a directory"),
    (lambda: "é".encode("ascii"), "not valid UTF-8 or ASCII"),
    (lambda: b"\xff".decode(), "not valid UTF-8 or ASCII"),
    (lambda: ValueError("bad\nvalue"), "invalid value: bad value"),
    (lambda: MemoryError(), "out of memory"),
    (_client_error, "AWS RegisterImage: AccessDenied: not allowed"),
    (_no_credentials, "no AWS credentials found"),
])
def test_machine_and_input_errors_are_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        make: object, says: str) -> None:
    import builder.commands.schema as schema

    try:
        exc = make()  # type: ignore[operator]
    except Exception as raised:  # the encode/decode cases raise while being made
        exc = raised
    monkeypatch.setattr(schema, "run", _raising(exc))
    assert main(["schema"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amibake: error: ") and says in err, err
    # --debug shows the traceback instead
    monkeypatch.setattr(schema, "run", _raising(exc))
    with pytest.raises(type(exc)):
        main(["schema", "--debug"])


def test_a_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import builder.commands.schema as schema

    monkeypatch.setattr(schema, "run", _raising(KeyError("bug")))
    with pytest.raises(KeyError):
        main(["schema"])


def test_json_mode_reports_the_error_as_json(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import builder.commands.schema as schema

    monkeypatch.setattr(schema, "run", _raising(FileNotFoundError(2, "No such file", "/x")))
    assert main(["schema", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"] == "/x: No such file"


def _verb_helps(parser: object) -> dict[str, str]:
    sub = next(a for a in parser._actions if a.dest == "verb")  # type: ignore[attr-defined]
    return {a.dest: a.help for a in sub._choices_actions}


def test_each_verb_module_registers_its_verb_with_the_tables_help() -> None:
    """builder.commands.VERBS is what `--help` lists without importing the verbs:
    it names every verb a module registers, with the help that module gives."""
    from builder.commands import VERBS

    assert _verb_helps(build_parser()) == VERBS
    assert _verb_helps(build_parser(set())) == VERBS


def _modules_after(argv: list[str], tmp_path: Path) -> tuple[int, str, set[str]]:
    """Run the CLI in a fresh interpreter; (exit code, stdout, modules it imported)."""
    listing = tmp_path / "modules.txt"
    entry = ("import sys; from builder.cli import main; rc = main(sys.argv[2:]); "
             "open(sys.argv[1], 'w').write('\\n'.join(sys.modules)); sys.exit(rc)")
    env = {**os.environ, "AMIBAKE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", entry, str(listing), *argv], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    return proc.returncode, proc.stdout, set(listing.read_text().split("\n"))


def _verb_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("builder.commands.")}


def test_help_lists_every_verb_without_importing_one(tmp_path: Path) -> None:
    from builder.commands import VERBS

    rc, out, modules = _modules_after(["--help"], tmp_path)
    assert rc == 0
    words = " ".join(out.split())  # argparse wraps long help lines
    for name, help_text in VERBS.items():
        assert f"{name} {help_text}" in words, name
    assert _verb_modules(modules) == set()


def test_a_warm_validate_imports_neither_aws_nor_cloud_init(tmp_path: Path) -> None:
    """The second validate of the same manifests (verdicts cached) loads only its own
    verb: no publisher, AWS SDK, metadata server or cloud-init's schema."""
    assert _modules_after(["validate"], tmp_path)[0] == 0  # cold: fills the cache
    rc, out, modules = _modules_after(["validate"], tmp_path)
    assert rc == 0 and "clean" in out
    assert _verb_modules(modules) == {"builder.commands.validate"}
    heavy = {"boto3", "botocore", "moto", "cloudinit", "jsonschema", "builder.publish",
             "builder.aws", "builder.imds", "builder.bake.pipeline", "builder.cutover"}
    assert {m for m in modules if m.split(".")[0] in heavy or
            any(m == h or m.startswith(h + ".") for h in heavy)} == set()
