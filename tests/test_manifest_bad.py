"""Malformed manifests: every problem at its exact file:line:col, never a traceback.

Each file in tests/bad_manifests/ starts with `# expect: LINE:COL: message`
lines: exactly the problems the loader must report, in order.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.manifest import load_manifest, load_manifest_text

HERE = Path(__file__).resolve().parent
CORPUS = sorted((HERE / "bad_manifests").glob("*.yaml"))
SEED = HERE.parent / "manifests" / "smallpayroll.yaml"


def _expected(path: Path) -> list[str]:
    lines = []
    for raw in path.read_bytes().splitlines():
        if not raw.startswith(b"# expect: "):
            break
        lines.append(raw[len(b"# expect: "):].decode())
    return lines


def _problems(path: Path) -> UserError:
    with pytest.raises(UserError) as info:
        load_manifest(path)
    return info.value


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30
    assert all(_expected(p) for p in CORPUS), "every corpus file states what it expects"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_manifest_reports_exactly(path: Path) -> None:
    err = _problems(path)
    got = [f"{p.location.line}:{p.location.col}: {p.message}" for p in err.problems]
    assert got == _expected(path)
    assert {p.location.file for p in err.problems} == {str(path)}
    count = len(err.problems)
    assert err.message == f"{path}: {count} problem{'s' if count > 1 else ''}"
    assert err.hint
    # the CLI prints each as file:line:col: message
    assert str(err.problems[0]).startswith(f"{path}:{err.problems[0].location.line}:")


def test_every_problem_in_a_file_is_collected() -> None:
    err = _problems(HERE / "bad_manifests" / "many_problems.yaml")
    assert len(err.problems) == 3


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    err = _problems(path)
    assert [str(p) for p in err.problems] == [
        f"{path}:1:1: the manifest is empty (expected a mapping of settings)"
    ]


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "dir"])
def test_unreadable_path(tmp_path: Path, make: object) -> None:
    path = tmp_path / "m.yaml"
    make(path)  # type: ignore[operator]
    err = _problems(path)
    assert err.problems[0].message.startswith("cannot read: ")


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (1024 * 1024) + b"\n")
    assert "the limit for a manifest" in _problems(path).problems[0].message


def test_endless_device_does_not_hang() -> None:
    err = _problems(Path("/dev/zero"))
    assert [str(p) for p in err.problems] == [
        "/dev/zero:1:1: file is over 1048576 bytes, the limit for a manifest"]


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    with pytest.raises(UserError) as info:
        load_manifest_text("\n".join(lines) + "\n", "bomb.yaml")
    assert [str(p) for p in info.value.problems] == [
        "bomb.yaml:2:10: aliases (*a0) are not supported in manifests"
    ]


@pytest.mark.parametrize("text, message", [
    ("[" * 5000 + "]" * 5000, "invalid YAML: nested too deeply"),
    ("{a: " * 3000 + "1" + "}" * 3000, "invalid YAML: nested too deeply"),
])
def test_deep_nesting(text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "deep.yaml")
    assert info.value.problems[0].message == message


def _seed_with(old: str, new: str) -> str:
    text = SEED.read_text()
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("value", [
    "9" * 5000,                      # past Python's int-string limit
    "1" + ":59" * 20000,             # YAML 1.1 sexagesimal, huge
    "!!int nonsense",
    "0x" + "f" * 3000,
])
def test_huge_or_odd_integers(value: str) -> None:
    text = _seed_with("count: 3 ", f"count: {value} ")
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "m.yaml")
    (problem,) = info.value.problems
    assert problem.message.startswith("components.appserver.count: ")
    assert problem.location.line == text[: text.index("count: " + value[:5])].count("\n") + 1


def test_explicit_bool_tag_with_odd_value() -> None:
    text = _seed_with("gzip_static: true", "gzip_static: !!bool maybe")
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "m.yaml")
    assert "expected true or false, got a boolean 'maybe'" in info.value.problems[0].message


def _only_user_errors(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load_manifest(path)
    except UserError as err:
        assert err.problems, data[:80]
        for p in err.problems:
            assert p.location.file == str(path) and p.location.line >= 0


def test_fuzz_random_bytes(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    alphabet = b"abc:-[]{}&*!|>'\"#%@`,?\n\t 0123456789\x00\xff\xc3"
    for _ in range(400):
        n = rng.randrange(0, 200)
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(n))
        else:
            data = bytes(rng.choice(alphabet) for _ in range(n))
        _only_user_errors(data, tmp_path)


def test_fuzz_truncations_of_the_seed(tmp_path: Path) -> None:
    data = SEED.read_bytes()
    for end in range(0, len(data), 37):
        _only_user_errors(data[:end], tmp_path)


def test_fuzz_mutations_of_the_seed(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = SEED.read_bytes()
    tokens = [b": ", b"- ", b"[", b"]", b"{", b"}", b"&x ", b"*x", b"\t", b"\n", b"  ",
              b"!!str ", b"~", b"yes", b"99999999999999999999", b"\xff", b"'", b'"']
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(mutated))
            if rng.random() < 0.5:
                mutated[at:at + rng.randrange(1, 6)] = rng.choice(tokens)
            else:
                del mutated[at:at + rng.randrange(1, 20)]
        _only_user_errors(bytes(mutated), tmp_path)


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    err = _problems(path)
    assert [str(p) for p in err.problems] == [f"{path}: cannot read: not a regular file"]
