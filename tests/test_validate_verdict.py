"""amibake's verdict on cloud-config == bookworm's `cloud-init schema`, case by case.

The reference is the extracted Debian CLI run by the host's /usr/bin/python3
with only Debian's packages (tests/cloudinit_cli.py). The corpus holds the
documents on which libyaml's CSafeLoader and PyPI's jsonschema disagree with
what the image's cloud-init runs: PyYAML's pure-Python SafeLoader and
jsonschema 4.10.3 with its format checkers.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import yaml

from builder.validate.schema import (
    DIST_PACKAGES,
    bookworm_python,
    cloudinit_root,
    schema_problems,
)
from tests.cloudinit_cli import cli_verdict

H = "#cloud-config\n"

#: name → (document, valid for bookworm's cloud-init?)
CORPUS: dict[str, tuple[str, bool]] = {
    # YAML: SafeLoader (cloud-init) against CSafeLoader (libyaml)
    "tab-after-colon": (H + "locale:\tC.UTF-8\n", False),
    "trailing-tab": (H + "locale: C.UTF-8\t\n", False),
    "yaml-1.3-directive": (H + "%YAML 1.3\n---\nlocale: C.UTF-8\n", True),
    "lone-surrogate-escape": (H + 'locale: "\\ud800"\n', True),
    "bom-inside-the-document": (H + "locale: C.UTF-8\n\ufeffruncmd: [a]\n", True),
    "nested-100": (H + "x: " + "[" * 100 + "a" + "]" * 100 + "\n", True),
    "nested-600": (H + "x: " + "[" * 600 + "a" + "]" * 600 + "\n", False),
    "nested-mappings-1000": (H + "x: " + "{a: " * 1000 + "b" + "}" * 1000 + "\n", False),
    # jsonschema 4.10.3's format checkers (rfc3987, date.fromisoformat)
    "uri-format-bad": (H + "phone_home:\n  url: 'not a uri'\n", False),
    "uri-format-ok": (H + "phone_home:\n  url: 'http://metadata.invalid/$INSTANCE_ID/'\n",
                      True),
    "uri-format-apt-mirror": (H + "apt:\n  primary:\n  - arches: [default]\n"
                              "    uri: 'a mirror'\n", False),
    "expiredate-compact": (H + "users:\n- name: x\n  expiredate: '20301231'\n", True),
    "expiredate-iso": (H + "users:\n- name: x\n  expiredate: '2030-12-31'\n", True),
    "expiredate-impossible": (H + "users:\n- name: x\n  expiredate: '2030-13-45'\n", False),
    "hostname-format-lenient": (H + "ntp:\n  servers: ['-bad-']\n", True),
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_same_verdict_as_bookworms_cloud_init(name: str, tmp_path: Path) -> None:
    text, valid = CORPUS[name]
    path = _write(tmp_path, name, text)
    cli_ok, output = cli_verdict(path)
    ours = schema_problems(path.read_bytes())
    assert cli_ok is valid, output
    assert (not ours) is valid, ours


def test_libyaml_would_have_given_the_opposite_verdict() -> None:
    """The corpus is not trivially agreed on: libyaml disagrees where noted above."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        pytest.fail("the venv's PyYAML lacks libyaml: this check needs it")
    disagree = set()
    for name in ("tab-after-colon", "trailing-tab", "yaml-1.3-directive",
                 "lone-surrogate-escape", "bom-inside-the-document", "nested-600"):
        text, valid = CORPUS[name]
        libyaml_loads = _loads_in_a_fresh_thread(text, loader)
        if libyaml_loads is not valid:
            disagree.add(name)
    assert disagree == {"tab-after-colon", "trailing-tab", "yaml-1.3-directive",
                        "lone-surrogate-escape", "bom-inside-the-document", "nested-600"}


def _loads_in_a_fresh_thread(text: str, loader: type) -> bool:
    """Does `loader` load `text`? Run on a short stack, as the CLI's."""
    outcome: list[bool] = []

    def load() -> None:
        try:
            yaml.load(text.encode("utf-8", "surrogatepass"), Loader=loader)
            outcome.append(True)
        except (yaml.YAMLError, RecursionError):
            outcome.append(False)

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    return outcome[0]


def _deepest_valid(shape: str) -> int:
    """The deepest nesting our validator accepts (bisection, in-process)."""
    lo, hi = 100, 1000
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if schema_problems(_nested(shape, mid)):
            hi = mid
        else:
            lo = mid
    return lo


def _nested(shape: str, depth: int) -> str:
    if shape == "sequences":
        return H + "x: " + "[" * depth + "a" + "]" * depth + "\n"
    return H + "x: " + "{a: " * depth + "b" + "}" * depth + "\n"


@pytest.mark.parametrize("shape", ["sequences", "mappings"])
def test_nesting_fails_at_the_same_depth_as_the_cli(shape: str, tmp_path: Path) -> None:
    deepest = _deepest_valid(shape)
    ok, output = cli_verdict(_write(tmp_path, "deepest", _nested(shape, deepest)))
    assert ok, output
    ok, output = cli_verdict(_write(tmp_path, "deeper", _nested(shape, deepest + 1)))
    assert not ok and "maximum recursion depth exceeded" in output, output


def test_the_venv_keeps_its_own_packages() -> None:
    """Debian's modules are only seen inside `bookworm_python()`, the venv's only outside."""
    dist = str(cloudinit_root() / DIST_PACKAGES)
    assert schema_problems(H + "locale: C.UTF-8\n") == []
    assert "cloudinit" not in sys.modules
    assert not yaml.__file__.startswith(dist)
    with bookworm_python():
        import jsonschema
        import yaml as debian_yaml

        assert jsonschema.__file__.startswith(dist) and debian_yaml.__file__.startswith(dist)
        assert debian_yaml is not yaml and "cloudinit" in sys.modules
    assert "cloudinit" not in sys.modules and sys.modules["yaml"] is yaml
