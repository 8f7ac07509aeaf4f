"""The 2010 manifest, honest: bake refuses it at once with the reasons, validate
calls it render-only (exit 0), and the verdict comes from facts, not its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.bake.bakeable import bake_blockers, check_bakeable, ruby_openssl_ceiling
from builder.cli import main
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import Tarball
from tests.bake_fixture import ROOT

OLD = ROOT / "manifests" / "smallpayroll-2010.yaml"
SEED = ROOT / "manifests" / "smallpayroll.yaml"


def _line(path: Path, start: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                if line.strip().startswith(start))


def test_2010_cannot_be_baked_and_says_why_at_each_line() -> None:
    with pytest.raises(UserError) as err:
        check_bakeable(load_manifest(OLD))
    message = str(err.value)
    assert "REE 1.8.7-2010.02 needs OpenSSL 1.0, bookworm has 3.0" in message
    assert "PostgreSQL 8.4 is not in bookworm (it has 15)" in message
    assert "render-only" in err.value.hint
    lines = {p.location.line for p in err.value.problems}
    assert lines == {_line(OLD, "version: 1.8.7"), _line(OLD, 'version: "8.4"')}


def test_bake_refuses_it_before_anything_is_made(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    store, cache = tmp_path / "images", tmp_path / "cache"
    code = main(["bake", str(OLD), "--store", str(store), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{OLD}:{_line(OLD, 'version: 1.8.7')}:" in err
    assert "needs OpenSSL 1.0, bookworm has 3.0" in err and "PostgreSQL 8.4" in err
    assert not store.exists() and not cache.exists()


def test_validate_says_render_only_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(OLD)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "render-only" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{OLD}: render-only")
    assert "OpenSSL 1.0" in lines[0] and "clean" in out
    assert main(["validate", "--json", str(OLD)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and "PostgreSQL 8.4" in doc["manifests"][0]["render_only"]


def test_the_verdict_follows_the_facts_not_the_file_name(tmp_path: Path) -> None:
    text = OLD.read_text()
    fixed_pg = text.replace('version: "8.4"', 'version: "15"').replace(
        "data_dir: /mnt/postgresql/8.4/main", "data_dir: /mnt/postgresql/15/main")
    renamed = tmp_path / "anything.yaml"
    renamed.write_text(fixed_pg)
    only_ree = [p.message for p in bake_blockers(load_manifest(renamed))]
    assert len(only_ree) == 1 and "OpenSSL 1.0" in only_ree[0]
    modern = fixed_pg.replace("version: 1.8.7-2010.02", "version: 3.2.2")
    (tmp_path / "smallpayroll-2010.yaml").write_text(modern)
    assert bake_blockers(load_manifest(tmp_path / "smallpayroll-2010.yaml")) == []
    assert bake_blockers(load_manifest(SEED)) == []


def test_a_bakeable_manifest_has_no_render_only_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = OLD.read_text().replace('version: "8.4"', 'version: "15"').replace(
        "data_dir: /mnt/postgresql/8.4/main", "data_dir: /mnt/postgresql/15/main").replace(
        "version: 1.8.7-2010.02", "version: 3.2.2")
    (tmp_path / "modern.yaml").write_text(text)
    assert main(["validate", "--json", str(tmp_path / "modern.yaml")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["manifests"][0]["render_only"] is None


@pytest.mark.parametrize(("version", "ceiling"), [
    ("1.8.7-2010.02", "1.0"), ("1.9.3-p551", "1.0"), ("2.3.8", "1.0"), ("2.4.10", "1.1"),
    ("2.7.8", "1.1"), ("3.0.6", "1.1"), ("3.1.4", None), ("3.3.0", None), ("", None),
])
def test_ruby_openssl_table(version: str, ceiling: str | None) -> None:
    tarball = Tarball(url="https://example.invalid/ruby.tar.gz", prefix="/opt/ruby",
                      version=version)
    assert ruby_openssl_ceiling(tarball) == ceiling
