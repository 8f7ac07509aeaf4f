"""smallpayroll's manifest with one block inserted, loaded: the problems the
loader reports (`file:line:col: message`) and the line the block starts on."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import UserError
from builder.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent


def problems_with(tmp_path: Path, block: str, *, before: str = "  new_db:\n",
                  text: str | None = None) -> tuple[list[str], int]:
    text = text if text is not None else (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    assert before in text
    text = text.replace(before, block + before, 1)
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        load_manifest(tmp_path / "m.yaml")
    line = text[:text.index(block)].count("\n") + 1
    return [f"{p.location}: {p.message}" for p in info.value.problems], line
