"""The session's real bake of the seed manifest, shared by every test that needs it.

`baked_image` (session scope) bakes manifests/smallpayroll.yaml (the Rails
sample, cloudinit/app-rails, by `path:`) once per test
session into a session-private store, with the layer cache at its default
place (~/.cache/amibake or $AMIBAKE_CACHE_DIR: content-addressed, so sharing
it between sessions is safe and makes later sessions fast). The bake skips
its own boot test: the boot tests (tests/test_boot_roles.py) boot this very
disk in every role. Imported into tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.bake.cache import default_cache_dir
from builder.bake.pipeline import BakeOptions, bake
from builder.manifest import load_manifest
from builder.manifest.model import Manifest, Ruby
from builder.store import StoredImage

ROOT = Path(__file__).resolve().parent.parent
SEED_MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"


def bake_options(store_root: Path, **kw: object) -> BakeOptions:
    """Options for test bakes: the shared layer cache, no boot test unless asked.

    allow_dirty: the seed bakes the Rails sample from this checkout by `path:`,
    and a test bakes the tree under test, committed or not (a fresh clone is
    clean; image.json records `dirty` either way). `make image` refuses a dirty
    sample unless ALLOW_DIRTY=1."""
    kw.setdefault("skip_boot_test", True)
    kw.setdefault("allow_dirty", True)
    return BakeOptions(store_root=store_root, cache_dir=default_cache_dir(), **kw)  # type: ignore[arg-type]


#: The seed's `app.code` line: the Rails sample by `path:`, relative to manifests/.
SEED_CODE_LINE = "  code: {path: ../cloudinit/app-rails}\n"
RAILS_SAMPLE = ROOT / "cloudinit" / "app-rails"


def seed_text(text: str | None = None) -> str:
    """The seed manifest's text (or `text`) with the Rails sample's path made
    absolute, for a copy that lives outside manifests/."""
    text = SEED_MANIFEST.read_text() if text is None else text
    return text.replace(SEED_CODE_LINE, f"  code: {{path: {RAILS_SAMPLE}}}\n", 1)


def copy_manifest(dest_dir: Path, *replacements: tuple[str, str]) -> Path:
    """The seed manifest copied into `dest_dir`, with text replacements applied.

    Unless a replacement changes it, the `app.code` path is made absolute so
    that the copy still names the Rails sample of this checkout."""
    text = SEED_MANIFEST.read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in the seed manifest"
        text = text.replace(old, new, 1)
    dest = dest_dir / SEED_MANIFEST.name
    dest.write_text(seed_text(text))
    return dest


def rack_manifest(dest_dir: Path) -> Path:
    """The seed copied into `dest_dir` as a file with the Rack sample (rack_seed's form)."""
    seed = SEED_MANIFEST.read_text()
    secrets = seed[seed.index(SEED_CODE_LINE):seed.index("  database:\n")]
    packages = seed[seed.index("    packages: [ruby,"):seed.index("\n\n  appserver:")]
    return copy_manifest(dest_dir, (secrets, "  code: sample\n"),
                         (packages, f"    packages: [{', '.join(Ruby().packages)}]"))


def rack_seed(manifest: Manifest) -> Manifest:
    """The seed with amibake's Rack sample (`code: sample`, its Debian packages, no
    app secrets): the smallest image, and the form fried user-data can carry."""
    ruby = manifest.components.ruby
    assert ruby is not None
    return dataclasses.replace(
        manifest,
        app=dataclasses.replace(manifest.app, code="sample", secrets={}),
        components=dataclasses.replace(manifest.components, ruby=dataclasses.replace(
            ruby, packages=Ruby().packages)))


@pytest.fixture(scope="session")
def baked_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoredImage]:
    """The seed manifest baked once per session (StoredImage; .disk_path is disk.raw)."""
    store_root = tmp_path_factory.mktemp("bake-store") / "images"
    manifest = load_manifest(SEED_MANIFEST)
    result = bake(manifest, bake_options(store_root), say=lambda _text: None)
    yield result.image
    shutil.rmtree(store_root, ignore_errors=True)
