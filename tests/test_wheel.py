"""The built wheel works outside the checkout: templates, boot scripts and the
sample app ship inside it (builder/resources/), `validate` reads ./manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import builder
from builder.validate.schema import cloudinit_root
from tests.bake_fixture import rack_manifest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("builder", "cloudinit", "pyproject.toml", "setup.py", "README.md")


def _run(cmd: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    # never the caller's PYTHONPATH (bench/tier_times.py sets it to the checkout): pip
    # would find the checkout's amibake "already satisfied" and install nothing
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                          **kwargs)  # type: ignore[call-overload, no-any-return]


def test_the_installed_wheel_renders_and_validates_outside_the_checkout(tmp_path: Path) -> None:
    # build from a copy of the sources: nothing is written into the checkout
    src = tmp_path / "src"
    # without bytecode: other test workers write it into the checkout meanwhile
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", wheels, src])
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("amibake-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"builder/resources/{p.relative_to(ROOT / 'cloudinit').as_posix()}"
               for p in (ROOT / "cloudinit").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped and shipped <= names
    assert not any(n.startswith("cloudinit/") for n in names)  # never an importable cloudinit

    # a fresh venv holding only the wheel; its dependencies come from this
    # venv's site-packages (a .pth after its own), so nothing is downloaded
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin/python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                      "--no-deps", "--no-index", wheel])
    assert installed.returncode == 0, installed.stderr
    (site / "zz-amibake-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    (work / "manifests").mkdir(parents=True)
    shutil.copy2(ROOT / "manifests/smallpayroll.yaml", work / "manifests")
    # fried user-data: the seed with the Rack sample (its Rails app is only in an image)
    rack_manifest(tmp_path).rename(work / "manifests/smallpayroll-rack.yaml")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "AMIBAKE_CLOUDINIT_ROOT": str(cloudinit_root())}
    where = _run([python, "-c", "import builder; print(builder.__file__); "
                  "print(builder.CHECKOUT); print(builder.TEMPLATES_DIR)"], cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    module, checkout, templates = where.stdout.split()
    assert module.startswith(str(site)) and checkout == "None"
    assert templates == str(site / "builder/resources")

    rendered = _run([venv / "bin/amibake", "render", "manifests/smallpayroll-rack.yaml",
                     "--role", "web", "--out", "out"], cwd=work, env=env)
    assert rendered.returncode == 0, rendered.stderr
    user_data = (work / "out").rglob("*")
    assert any(p.is_file() and p.read_bytes().startswith(b"#cloud-config") for p in user_data)
    assert any(b"amibake-dispatch" in p.read_bytes()
               for p in (work / "out").rglob("*") if p.is_file())

    validated = _run([venv / "bin/amibake", "validate"], cwd=work, env=env)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "2 manifest(s)" in validated.stdout and "clean" in validated.stdout
    assert builder.CHECKOUT == ROOT  # this process still runs from the checkout
