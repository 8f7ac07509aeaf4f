"""Verdicts kept on disk between `amibake validate` runs (builder/validate/verdict_store.py).

The verdicts themselves are cloud-init's (tests/test_validate_verdict.py compares
them with `cloud-init schema`); here: a kept verdict is the one computed, a warm
run does not load cloud-init at all, an entry that is not what was written is
computed again, and a change to the judge makes a new key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.validate import schema
from builder.validate.schema import DIST_PACKAGES, cloudinit_root, schema_problems
from builder.validate.verdict_store import JUDGE_FILES, VerdictStore, judge_identity

H = "#cloud-config\n"
BAD = H + "packages: 7\nruncmd: {a: 1}\n"

PROBE = """
import json, sys
from builder.cli import main
from builder.validate import schema
rc = main(["validate"])
print(json.dumps({"rc": rc, "loaded": schema._bookworm.cache_info().currsize}))
"""


def _run_validate(cache: Path, **env: str) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
        env={**os.environ, "AMIBAKE_CACHE_DIR": str(cache), **env},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "cloud-init-verdicts").rglob("*.json")
                  if p.name != "facts.json")


def test_cold_run_keeps_verdicts_and_warm_run_never_loads_cloud_init(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = _run_validate(cache)
    assert cold == {"rc": 0, "loaded": 1}
    entries = _entries(cache)
    assert entries, "no verdict kept"
    assert all(json.loads(p.read_text()) == [] for p in entries)  # the manifests are clean
    facts = json.loads(next((cache / "cloud-init-verdicts").rglob("facts.json")).read_text())
    assert facts["version"] == "22.4.2"
    assert "runcmd" in facts["known_keys"] and "packages" in facts["known_keys"]

    warm = _run_validate(cache)
    assert warm == {"rc": 0, "loaded": 0}  # every answer came from disk
    assert _entries(cache) == entries


def test_switched_off_nothing_is_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert _run_validate(cache, AMIBAKE_VERDICT_CACHE="0") == {"rc": 0, "loaded": 1}
    assert not (cache / "cloud-init-verdicts").exists()


@pytest.fixture
def on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AMIBAKE_CACHE_DIR", str(tmp_path / "cache"))
    schema.keep_verdicts_on_disk()
    assert schema._disk is not None
    yield schema._disk
    monkeypatch.setattr(schema, "_disk", None)
    schema._facts.cache_clear()
    schema._cached_verdict.cache_clear()


def test_a_problem_verdict_is_kept_as_computed(on_disk: VerdictStore) -> None:
    computed = schema_problems(BAD)
    assert computed, "the document should have schema problems"
    kept = on_disk.get(BAD.encode())
    assert kept == [(i.path, i.message) for i in computed]
    schema._cached_verdict.cache_clear()
    assert schema_problems(BAD) == computed  # now read back from disk


@pytest.mark.parametrize("garbage", [b"", b"{", b'{"a": 1}', b'[["only one"]]', b"[[1, 2]]",
                                     b'[["p", "m", "x"]]', b"\xff\xfe"])
def test_an_entry_that_is_not_what_was_written_is_judged_again(
        on_disk: VerdictStore, garbage: bytes) -> None:
    truth = schema_problems(BAD)
    entry = on_disk._entry(BAD.encode())
    entry.write_bytes(garbage)
    schema._cached_verdict.cache_clear()
    assert schema_problems(BAD) == truth
    assert json.loads(entry.read_text()) == [[i.path, i.message] for i in truth]


def test_a_lying_facts_file_is_ignored(on_disk: VerdictStore) -> None:
    on_disk.dir.mkdir(parents=True, exist_ok=True)
    (on_disk.dir / "facts.json").write_text('{"version": 22, "known_keys": "runcmd"}')
    schema._facts.cache_clear()
    assert schema.cloudinit_version() == "22.4.2"
    assert "runcmd" in schema.known_keys()


def test_the_judge_identity_follows_every_judge_file(tmp_path: Path) -> None:
    real = cloudinit_root() / DIST_PACKAGES
    dist = tmp_path / "dist"
    for rel in JUDGE_FILES:
        (dist / rel).parent.mkdir(parents=True, exist_ok=True)
        (dist / rel).write_bytes((real / rel).read_bytes())
        os.utime(dist / rel, ns=(10**18, 10**18))
    first = judge_identity(dist)
    assert first is not None and first == judge_identity(dist)
    seen = {first}
    for rel in JUDGE_FILES:
        os.utime(dist / rel, ns=(2 * 10**18, 2 * 10**18))
        now = judge_identity(dist)
        assert now not in seen, f"{rel} is not part of the key"
        seen.add(now)
    (dist / JUDGE_FILES[0]).unlink()
    assert judge_identity(dist) is None
