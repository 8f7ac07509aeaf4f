"""Every verb that reads a file, given a file it cannot use: missing, empty,
binary, a directory, unreadable (to an unprivileged user), oversized,
endless (/dev/zero), not UTF-8. Each answer is one line (a `file:line:col` problem may come with its
summary line), exit 1 or 2, and never a traceback.

The verbs and their file arguments are found in the argparse tree (options
typed `Path`), so a verb added later is fuzzed without editing this file;
directories and outputs (metavar DIR, OUTPUT_ARGS) are not inputs.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
#: files a verb writes, or reads only after a valid manifest (not inputs to fuzz)
OUTPUT_ARGS = {("unbundle", "output"), ("cutover", "state")}
#: what each verb needs besides its files to get as far as reading them
BASE: dict[str, list[str]] = {
    "bundle": ["-u", "123456789012"],
    "cutover": ["plan"],
    "launch": ["web"],
    "render": ["--role", "web"],
    "upload-bundle": ["-b", "amibake-fuzz-bucket"],
}
KINDS = ["missing", "empty", "binary", "directory", "oversized", "endless", "non-utf8",
         "unreadable"]
OVERSIZED = 64 * 1024 * 1024
#: a problem line: `file:line:col: message`, or `file: message` for the file as a whole
PROBLEM_LINE = re.compile(r"^(.+:\d+:\d+|/[^:]+): ")


def _file_args() -> list[tuple[tuple[str, ...], argparse.Action, list[argparse.Action]]]:
    """(verb path, the file argument, the verb's other required arguments)."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        actions = parser._actions
        for action in actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif action.type is Path and action.metavar != "DIR" \
                    and (" ".join(path), action.dest) not in OUTPUT_ARGS:
                required = [a for a in actions if a is not action and a.type is Path
                            and (a.required or not a.option_strings)]
                found.append((path, action, required))

    walk(build_parser(), ())
    return found


FILE_ARGS = _file_args()


def _argv(path: tuple[str, ...], action: argparse.Action, required: list[argparse.Action],
          bad: str, extra: list[str]) -> list[str]:
    argv = [*path, *BASE.get(" ".join(path), []), *extra]
    for a in [*required, action]:
        value = [bad] if a.nargs not in ("*", "+") else [bad]
        argv += [*(a.option_strings[:1]), *value]
    return argv


@pytest.fixture(scope="module")
def inputs() -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="amibake-fuzz-"))
    base.chmod(0o755)  # the unprivileged user must reach the files to be refused by them
    files = {
        "missing": base / "missing.yaml",
        "empty": base / "empty.yaml",
        "binary": base / "binary.yaml",
        "directory": base / "directory",
        "oversized": base / "oversized.yaml",
        "endless": Path("/dev/zero"),  # no size to check: only a bounded read stops
        "non-utf8": base / "latin1.yaml",
        "unreadable": base / "unreadable.yaml",
    }
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(bytes(range(256)) * 16 + b"\0\0\0")
    files["directory"].mkdir()
    with open(files["oversized"], "wb") as fh:  # sparse: costs no disk
        fh.truncate(OVERSIZED)
    files["non-utf8"].write_bytes("name: caf\u00e9\nversion: 1.0.0\n".encode("latin-1"))
    files["unreadable"].write_text("name: x\n")
    files["unreadable"].chmod(0o000)
    yield files
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A port in use: `imds serve` given usable files stops at binding it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No AWS credentials, an empty image store and cache: nothing heavy can start."""
    env = {
        "AMIBAKE_STORE": str(tmp_path / "store"), "AMIBAKE_CACHE_DIR": str(tmp_path / "cache"),
        "AMIBAKE_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
    }
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "EC2_CERT", "EC2_PRIVATE_KEY", "EC2_BUNDLE_CERT"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _check(code: int, out: str, err: str, what: str) -> None:
    assert "Traceback" not in out + err, f"{what}: traceback\n{err[-2000:]}"
    assert code in (1, 2), f"{what}: exit {code}\n{out[-500:]}\n{err[-500:]}"
    report = [ln for ln in (err or out).splitlines() if ln.strip()]
    if code == 2 and report and report[0].startswith("usage:"):
        report = [ln for ln in report if not ln.startswith((" ", "usage:"))]
    assert report, f"{what}: nothing said"
    problems = [ln for ln in report[:-1] if PROBLEM_LINE.match(ln)]
    assert len(report) == 1 or (len(report) == 2 and problems), \
        f"{what}: {len(report)} lines\n" + "\n".join(report[:10])


def _ids() -> list[str]:
    return [f"{' '.join(p)} {a.option_strings[0] if a.option_strings else a.dest}"
            for p, a, _ in FILE_ARGS]


def test_the_tree_has_file_arguments() -> None:
    verbs = {" ".join(p) for p, _, _ in FILE_ARGS}
    assert {"validate", "render", "imds serve", "cutover", "unbundle"} <= verbs


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("path", "action", "required"), FILE_ARGS, ids=_ids())
def test_bad_input_is_one_line(path: tuple[str, ...], action: argparse.Action,
                               required: list[argparse.Action], inputs: dict[str, Path],
                               held_port: int, isolated: dict[str, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--port", str(held_port)] if path == ("imds", "serve") else []
    failures = []
    for kind in KINDS:
        if kind == "unreadable":
            continue  # as an unprivileged user: test_unreadable_input_is_one_line
        argv = _argv(path, action, required, str(inputs[kind]), extra)
        try:
            code = main(argv)
        except BaseException as exc:  # noqa: BLE001 (reported below, with the argv)
            failures.append(f"{kind}: {' '.join(argv)}: raised {type(exc).__name__}: {exc}")
            capsys.readouterr()
            continue
        out, err = capsys.readouterr()
        try:
            _check(code, out, err, f"{kind}: amibake {' '.join(argv)}")
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0] + "\n    " + (err or out)[-300:])
    assert not failures, "\n".join(failures)


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@pytest.mark.parametrize(("path", "action", "required"), FILE_ARGS, ids=_ids())
def test_unreadable_input_is_one_line(path: tuple[str, ...], action: argparse.Action,
                                      required: list[argparse.Action],
                                      inputs: dict[str, Path], held_port: int,
                                      isolated: dict[str, str], tmp_path: Path) -> None:
    """As `nobody` when the tests run as root (root reads a mode-000 file);
    as the user running them otherwise."""
    home = tmp_path / "nobody"
    home.mkdir()
    drop: list[str] = []
    if os.geteuid() == 0:
        nobody = _nobody()
        shutil.chown(home, nobody.pw_uid, nobody.pw_gid)
        drop = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                "--clear-groups"]
    tmp_path.chmod(0o755)
    extra = ["--port", str(held_port)] if path == ("imds", "serve") else []
    argv = _argv(path, action, required, str(inputs["unreadable"]), extra)
    env = {**os.environ, **isolated, "HOME": str(home),
           "AMIBAKE_STORE": str(home / "store"), "AMIBAKE_CACHE_DIR": str(home / "cache"),
           "AMIBAKE_STATE_DIR": str(home / "state")}
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "builder", *argv],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    _check(proc.returncode, proc.stdout, proc.stderr, f"unreadable: amibake {' '.join(argv)}")
