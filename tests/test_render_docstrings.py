"""The on-instance Python scripts as shipped: shared modules inlined, docstrings
gone, code otherwise unchanged."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from builder.render.base import boot_files
from builder.render.docstrings import strip_docstrings
from builder.render.inline import inline_modules

ROOT = Path(__file__).resolve().parent.parent
BOOT = ROOT / "cloudinit" / "boot"
SCRIPTS = ("amibake-dispatch", "amibake-secret")


def _without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _shipped(name: str) -> bytes:
    return next(f.content for f in boot_files() if f.path == f"/usr/lib/amibake/{name}")


@pytest.mark.parametrize("name", SCRIPTS)
def test_shipped_script_is_the_source_without_docstrings(name: str) -> None:
    source = inline_modules((BOOT / name).read_text(), BOOT, name)
    shipped = _shipped(name).decode()
    assert len(shipped) < len(source) * 0.9
    assert _without_docstrings(shipped) == _without_docstrings(source)
    doc = ast.get_docstring(ast.parse(shipped)) or ""
    assert doc.startswith(source.split('"""')[1].split("\n\n")[0])
    assert f"cloudinit/boot/{name}" in doc
    assert sum(isinstance(n, ast.FunctionDef) and ast.get_docstring(n) is not None
               for n in ast.walk(ast.parse(shipped))) == 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_shipped_script_runs(tmp_path: Path, name: str) -> None:
    script = tmp_path / name
    script.write_bytes(_shipped(name))
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_docstring_sharing_a_line_with_code_or_alone_in_a_body_is_kept() -> None:
    source = ('"""Summary.\n\nDetails."""\n'
              "def only():\n    \"\"\"the whole body\"\"\"\n"
              "def two():\n    \"\"\"doc\"\"\"\n    return 2\n"
              "class C: \"\"\"same line\"\"\"\n")
    out = strip_docstrings(source, "x/y")
    assert '"""the whole body"""' in out and '"""doc"""' not in out
    assert '"""same line"""' in out and "Details." not in out
    assert out.startswith('"""Summary.\n')
    namespace: dict[str, object] = {}
    exec(compile(out, "stripped", "exec"), namespace)  # noqa: S102
    assert namespace["two"]() == 2  # type: ignore[operator]
