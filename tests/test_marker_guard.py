"""The marker guard (tests/marker_guard.py) in a pytest session of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = '''
import pytest
from tests.marker_guard import _slow_tools_need_a_marker, _tool_guards, check_collection

def pytest_collection_modifyitems(config, items):
    check_collection(items)

@pytest.fixture
def baked_image():
    return "a stand-in: only its name matters to the guard"
'''


def _pytest(where: Path) -> subprocess.CompletedProcess[str]:
    """pytest on `where`, without this session's own guard on PATH (the inner
    session's tests only ask mmdebstrap for its version)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if "marker-guard" not in p)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(where)],
        capture_output=True, text=True, timeout=120, cwd=where,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": path},
    )


def test_a_test_running_mmdebstrap_needs_the_bake_marker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tools.py").write_text(
        "import subprocess, pytest\n"
        "def test_unmarked():\n"
        "    subprocess.run(['mmdebstrap', '--version'], capture_output=True)\n"
        "@pytest.mark.bake\n"
        "def test_marked():\n"
        "    assert subprocess.run(['mmdebstrap', '--version']).returncode == 0\n"
        "def test_unrelated():\n"
        "    assert subprocess.run(['qemu-img', '--version']).returncode == 0\n")
    result = _pytest(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "ERROR test_tools.py::test_unmarked" in result.stdout
    assert "runs mmdebstrap: mark it @pytest.mark.bake" in result.stdout


def test_a_test_using_baked_image_without_a_marker_stops_the_session(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_fixture.py").write_text(
        "import pytest\n"
        "def test_unmarked(baked_image):\n    pass\n"
        "@pytest.mark.vm\n"
        "def test_marked(baked_image):\n    pass\n")
    result = _pytest(tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr  # usage error
    output = result.stdout + result.stderr
    assert "test_fixture.py::test_unmarked: use(s) baked_image" in output
    assert "test_marked" not in output.replace("test_unmarked", "")
