"""The app layer in real bakes of the Rails sample (cloudinit/app-rails) by `path:`.

The sample is copied into a temporary git repository (its committed files) and
baked for the all-in-one role. Then one line of a controller is changed and
committed, and the same version is baked again (--force): the bake's own
records say that only the app layer was rebuilt — the base layer came from
the cache (no mmdebstrap step), the app layer was a miss, and of image.json's
inputs only the app's digest and the app layer's key changed (the config
layer's and the disk's are the same). The new disk holds the changed line and
no `.git`. A third bake with nothing changed is a no-op.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from builder.bake.pipeline import bake, with_roles
from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.store import StoredImage
from tests.bake_fixture import bake_options
from tests.test_rails_render import RAILS_APP, rails_manifest

pytestmark = [pytest.mark.bake, pytest.mark.timeout(3600)]

ROLE = "all-in-one"
CONTROLLER = "app/controllers/health_controller.rb"
GIT = ["git", "-c", "user.name=amibake-test", "-c", "user.email=test@example.invalid",
       "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]


def git_copy(dest: Path) -> Path:
    """The sample's committed files in a fresh git repository at `dest`."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=RAILS_APP, check=True,
                             capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, tracked):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(RAILS_APP / rel, dest / rel)
    subprocess.run([*GIT, "init", "-q"], cwd=dest, check=True)
    commit(dest, "the Rails sample")
    return dest


def commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def manifest_for(dest: Path, app: Path) -> Manifest:
    """The Rails sample manifest (tests/test_rails_render.py's) with app.code at `app`."""
    path = rails_manifest(dest)
    lines = path.read_text().splitlines(keepends=True)
    code = [i for i, line in enumerate(lines) if line.startswith("  code:")]
    assert len(code) == 1, f"{path}: expected one `  code:` line"
    lines[code[0]] = f"  code: {{path: {app}}}\n"
    path.write_text("".join(lines))
    return with_roles(load_manifest(path), [ROLE])


def root_fs(image: StoredImage) -> str:
    """debugfs's name for the root partition of the image's disk."""
    out = subprocess.run(["sfdisk", "--json", image.disk_path], check=True,
                         capture_output=True, text=True).stdout
    parts = json.loads(out)["partitiontable"]["partitions"]
    root = max(parts, key=lambda p: p["size"])
    return f"{image.disk_path}?offset={root['start'] * 512}"


def debugfs(image: StoredImage, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, root_fs(image)], check=True,
                          capture_output=True, text=True).stdout


def test_one_line_app_change_rebuilds_only_the_app_layer(tmp_path: Path) -> None:
    app = git_copy(tmp_path / "app-rails")
    manifest = manifest_for(tmp_path, app)
    store = tmp_path / "images"
    root = manifest.app.root
    first = bake(manifest, bake_options(store), say=print)
    assert first.action == "built" and first.app_cached is not None
    before = json.loads((first.image.dir / "image.json").read_text())

    # one line of the app's code, committed; the same version rebuilt
    token = uuid.uuid4().hex  # never seen by the shared layer cache
    controller = app / CONTROLLER
    text = controller.read_text()
    assert text.count('render plain: "ok\\n"') == 1
    controller.write_text(text.replace('render plain: "ok\\n"',
                                       f'render plain: "ok {token}\\n"'))
    head = commit(app, "one line")
    say: list[str] = []
    second = bake(manifest_for(tmp_path, app), bake_options(store, force=True), say.append)
    after = json.loads((second.image.dir / "image.json").read_text())

    # the bake's own records: base from the cache, app layer built, nothing else changed
    assert second.action == "replaced"
    assert second.base_cached and "base" not in second.seconds and "checkout" in second.seconds
    assert second.app_cached is False and "app" in second.seconds
    assert any(line.startswith("building the app layer") for line in say), say
    assert not any(line.startswith("building the base layer") for line in say), say
    changed = {k for k, v in after["inputs"].items() if before["inputs"].get(k) != v}
    assert changed == {"app", "app_layer"}, changed
    assert after["inputs"].keys() == before["inputs"].keys()
    assert after["app"]["commit"] == head != before["app"]["commit"]
    assert after["app"]["tree_digest"] != before["app"]["tree_digest"]
    assert not after["app"]["dirty"]

    # the new disk holds the changed line, and the git metadata stayed out
    assert f'render plain: "ok {token}\\n"' in debugfs(second.image, f"cat {root}/{CONTROLLER}")
    listing = debugfs(second.image, f"ls {root}")
    assert "Gemfile.lock" in listing and ".git" not in listing.split()

    # nothing changed: a no-op, the stored image untouched
    third = bake(manifest_for(tmp_path, app), bake_options(store), say=print)
    assert third.action == "unchanged" and third.image.dir == second.image.dir
    assert third.image.inputs_digest == second.image.inputs_digest
    assert json.loads((third.image.dir / "image.json").read_text()) == after
