"""Every test that boots qemu or runs mmdebstrap carries the `vm` or `bake` marker,
so that the fast tier (`make test-fast`: -m "not vm and not bake") leaves out
exactly the slow tests. Imported into tests/conftest.py.

- At collection: a test that uses the `baked_image` fixture (a real bake) without
  one of the markers stops the session with a usage error naming it.
- At run time: an unmarked test runs with `qemu-system-x86_64` and `mmdebstrap`
  on PATH replaced by a stand-in that records the call and exits 97 (child
  processes inherit PATH, so a VM started by a subprocess is caught too); the
  test then fails, naming the marker it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SLOW_MARKERS = ("vm", "bake")
#: tool on PATH → the marker a test running it needs
GUARDED_TOOLS = {"qemu-system-x86_64": "vm", "mmdebstrap": "bake"}
#: fixtures that bake or boot
SLOW_FIXTURES = ("baked_image",)


def _marked(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in SLOW_MARKERS)


def check_collection(items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if not _marked(item)
                and set(getattr(item, "fixturenames", ())) & set(SLOW_FIXTURES)]
    if unmarked:
        raise pytest.UsageError(
            f"{', '.join(unmarked)}: use(s) {' or '.join(SLOW_FIXTURES)} without "
            f"@pytest.mark.vm or @pytest.mark.bake")


@pytest.fixture(scope="session")
def _tool_guards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shims = tmp_path_factory.mktemp("marker-guard")
    for tool, marker in GUARDED_TOOLS.items():
        script = shims / tool
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{tool} run by a test without @pytest.mark.{marker}" >&2\n'
            f': > "{shims}/called-{tool}"\n'
            "exit 97\n")
        script.chmod(0o755)
    return shims


@pytest.fixture(autouse=True)
def _slow_tools_need_a_marker(request: pytest.FixtureRequest, _tool_guards: Path,
                              monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if _marked(request.node):
        yield
        return
    for stale in _tool_guards.glob("called-*"):
        stale.unlink()
    monkeypatch.setenv("PATH", f"{_tool_guards}{os.pathsep}{os.environ.get('PATH', '')}")
    yield
    called = sorted(p.name.removeprefix("called-") for p in _tool_guards.glob("called-*"))
    if called:
        needed = sorted({GUARDED_TOOLS[tool] for tool in called})
        pytest.fail(f"this test runs {', '.join(called)}: mark it "
                    + " and ".join(f"@pytest.mark.{m}" for m in needed), pytrace=False)
