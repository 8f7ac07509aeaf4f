"""The no-op bake: exactly as safe as before, and light.

A store entry is written with the inputs a real bake records (recipe_for's
digests, a placeholder disk: nothing here reads it). Then `bake` is called
as the CLI calls it, without building anything:

- nothing changed → "unchanged";
- one app file's content changed with its size and modification time put
  back (what an mtime-keyed memo would miss) → not unchanged: the bake
  refuses the same version with other inputs. The app tree's digest hashes
  every file's bytes on every bake, so no memo can go stale;
- a no-op `amibake bake` process, once cloud-init's verdicts were kept by an
  earlier run, imports neither cloud-init nor the build code (mmdebstrap,
  disk, qemu, publisher).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.bake.pipeline import BakeOptions, bake, recipe_for
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.store import DISK_FILE, DiskInfo, Store, StoredImage
from tests.test_bake_app_layer import ROLE, git_copy, manifest_for

ROOT = Path(__file__).resolve().parent.parent
CONTROLLER = "app/controllers/health_controller.rb"


def store_as_baked(store_root: Path, manifest: Manifest) -> StoredImage:
    """A store entry with the inputs a bake of `manifest` records (no disk built)."""
    recipe = recipe_for(manifest)
    store = Store(store_root)
    with store.staging(recipe.name, recipe.version) as staged:
        (staged / DISK_FILE).write_bytes(b"")
        image = StoredImage(
            dir=staged, id=recipe.image_id, name=recipe.name, version=recipe.version,
            roles=recipe.roles, architecture=manifest.image.architecture,
            boot_mode=manifest.image.boot_mode, volume_size_gib=manifest.image.volume_size_gib,
            inputs=recipe.inputs, inputs_digest=recipe.inputs_digest,
            disk=DiskInfo(file=DISK_FILE, digest="sha256-blocks-512k:" + "0" * 64,
                          apparent_size=0, used_size=0),
            packages={}, build_time="2026-01-01T00:00:00Z", builder_version="test",
            boot_test={"skipped": True}, app=recipe.app.as_json())
        return store.commit(staged, image, replace=False)


@pytest.fixture()
def app_and_manifest(tmp_path: Path) -> tuple[Path, Manifest]:
    app = git_copy(tmp_path / "app")
    (tmp_path / "m").mkdir()
    return app, manifest_for(tmp_path / "m", app)


def options(tmp_path: Path) -> BakeOptions:
    return BakeOptions(store_root=tmp_path / "images", cache_dir=tmp_path / "cache",
                       skip_boot_test=True, allow_dirty=True)


def test_unchanged_app_is_a_no_op_and_a_same_size_same_mtime_edit_is_not(
        tmp_path: Path, app_and_manifest: tuple[Path, Manifest]) -> None:
    app, manifest = app_and_manifest
    stored = store_as_baked(tmp_path / "images", manifest)
    said: list[str] = []
    result = bake(manifest, options(tmp_path), said.append)
    assert result.action == "unchanged" and result.image.dir == stored.dir
    assert said == []  # nothing was built, not even announced

    # Same size, same mtime (and atime), other bytes: a stat-keyed memo would call it unchanged.
    path = app / CONTROLLER
    before = path.stat()
    data = path.read_bytes()
    i = data.index(b"ok")
    path.write_bytes(data[:i] + b"OK" + data[i + 2:])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    changed = recipe_for(manifest)
    assert changed.inputs["app"] != stored.inputs["app"]
    assert changed.inputs_digest != stored.inputs_digest
    with pytest.raises(UserError, match="already stored with different inputs"):
        bake(manifest, options(tmp_path), said.append)
    assert said == []

    path.write_bytes(data)  # the old bytes back (mtime now newer): unchanged again
    assert bake(manifest, options(tmp_path), said.append).action == "unchanged"


#: What a no-op has no use for: cloud-init (bookworm's, imported in isolation, so
#: seen by -X importtime, not in sys.modules), qemu, the publisher, AWS.
HEAVY = ("cloudinit", "jsonschema", "builder.vm", "builder.publish", "boto3", "botocore.client")


def imported(stderr: str) -> set[str]:
    """Module names in `python -X importtime`'s report."""
    return {line.rpartition("|")[2].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


def test_no_op_bake_process_imports_no_cloud_init_and_no_build_code(
        tmp_path: Path, app_and_manifest: tuple[Path, Manifest]) -> None:
    _, manifest = app_and_manifest
    store_as_baked(tmp_path / "images", manifest)
    env = {**os.environ, "AMIBAKE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-X", "importtime", "-m", "builder", "bake", str(manifest.source),
           "--roles", ROLE, "--skip-boot-test", "--allow-dirty",
           "--store", str(tmp_path / "images"), "--json"]

    def run() -> set[str]:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["action"] == "unchanged"
        return {m for m in imported(proc.stderr)
                if any(m == h or m.startswith(h + ".") for h in HEAVY)}

    first = run()  # judges the user-data with cloud-init and keeps the verdicts
    assert any(m.startswith("cloudinit.") for m in first)
    assert run() == set()
