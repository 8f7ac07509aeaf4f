"""The dispatcher reads what the renderer writes: roles.json and role markers.

Every role of the seed manifest: the image's files (image_content, as the
baker writes them) under a fake root, the role's user-data (baked and fried)
from render_role, then the real dispatcher. Setup scripts are swapped for
recorders (their own behaviour is tested with the renderer and in the qemu
boot tests); systemctl is the recording stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.imds import ImdsConfig, ImdsServer
from builder.manifest import load_manifest
from builder.render import image_content, render_role
from tests.bake_fixture import rack_seed

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"
RECORDER = '#!/bin/sh\necho "$0" >> "$AMIBAKE_ROOT/var/log/setup.log"\n'
# The setup recorders and systemctl write one event log, in the order they ran.
FAKE_SYSTEMCTL = """#!/usr/bin/python3
import os, sys
with open(os.environ["AMIBAKE_ROOT"] + "/var/log/setup.log", "a") as log:
    log.write("systemctl " + " ".join(sys.argv[1:]) + "\\n")
"""
PACKAGE_UNITS = ("nginx.service", "postgresql@.service")  # shipped by Debian packages


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("image") / "root"
    for file in image_content(load_manifest(MANIFEST)).files:
        path = root / file.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file.content)
        path.chmod(file.mode)
    doc = json.loads((root / "etc/amibake/roles.json").read_text())
    for role in doc["roles"].values():
        for script in (s for step in role["steps"] for s in step["setup"]):
            (root / script.lstrip("/")).write_text(RECORDER)
    units = root / "lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in PACKAGE_UNITS:
        (units / unit).write_text("[Service]\nExecStart=/bin/true\n")
    (root / "etc/passwd").write_text("admin:x:1000:1000::/home/admin:/bin/bash\n")
    (root / "home/admin").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    return root, doc


@pytest.mark.parametrize("baked", [True, False], ids=["baked", "fried"])
@pytest.mark.parametrize("role", ["web", "app", "db", "all-in-one"])
def test_dispatcher_applies_each_rendered_role(
    image: tuple[Path, dict[str, object]], tmp_path: Path, role: str, baked: bool,
) -> None:
    root, doc = image
    for state in ("var/lib/amibake/dispatched", "var/log/setup.log"):
        (root / state).unlink(missing_ok=True)
    roles = doc["roles"]
    assert isinstance(roles, dict)
    all_services = doc["all_services"]
    assert isinstance(all_services, list)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)
    manifest = load_manifest(MANIFEST)  # fried: the Rack form (the Rails app is image-only)
    user_data = render_role(manifest if baked else rack_seed(manifest), role,
                            baked=baked).user_data
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMIBAKE_", "JOURNAL"))}
    with ImdsServer(ImdsConfig(instance_id=f"i-0{role.replace('-', '')}", user_data=user_data,
                               public_keys=("ssh-ed25519 AAAAtest admin@example",))) as imds:
        env.update(AMIBAKE_IMDS_URL=imds.url, AMIBAKE_ROOT=str(root),
                   AMIBAKE_SYSTEMCTL=str(systemctl))
        proc = subprocess.run([str(ROOT / "cloudinit/boot/amibake-dispatch")], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    services = roles[role]["services"]
    others = [s for s in all_services if s not in services]
    # other roles' services off; per step: its setup, then its services queued;
    # then every service waited for, then enabled
    expected = [f"systemctl disable --now {' '.join(others)}"] if others else []
    for step in roles[role]["steps"]:
        expected += [str(root / s.lstrip("/")) for s in step["setup"]]
        if step["services"]:
            expected.append(f"systemctl start --no-block {' '.join(step['services'])}")
    expected += [f"systemctl start {' '.join(services)}",
                 f"systemctl --no-reload enable {' '.join(services)}"]
    assert (root / "var/log/setup.log").read_text().splitlines() == expected
    assert (root / "var/lib/amibake/role").read_text().strip() == role
