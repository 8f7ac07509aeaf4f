"""The session's real bake of the seed manifest, shared by every test that needs it.

`baked_image` (session scope) bakes manifests/smallpayroll.yaml once per test
session into a session-private store, with the layer cache at its default
place (~/.cache/amibake or $AMIBAKE_CACHE_DIR: content-addressed, so sharing
it between sessions is safe and makes later sessions fast). The bake skips
its own boot test: the boot tests (tests/test_boot_roles.py) boot this very
disk in every role. Imported into tests/conftest.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.bake.cache import default_cache_dir
from builder.bake.pipeline import BakeOptions, bake
from builder.manifest import load_manifest
from builder.store import StoredImage

ROOT = Path(__file__).resolve().parent.parent
SEED_MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"


def bake_options(store_root: Path, **kw: object) -> BakeOptions:
    """Options for test bakes: the shared layer cache, no boot test unless asked."""
    kw.setdefault("skip_boot_test", True)
    return BakeOptions(store_root=store_root, cache_dir=default_cache_dir(), **kw)  # type: ignore[arg-type]


def copy_manifest(dest_dir: Path, *replacements: tuple[str, str]) -> Path:
    """The seed manifest copied into `dest_dir`, with text replacements applied."""
    text = SEED_MANIFEST.read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in the seed manifest"
        text = text.replace(old, new, 1)
    dest = dest_dir / SEED_MANIFEST.name
    dest.write_text(text)
    return dest


@pytest.fixture(scope="session")
def baked_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoredImage]:
    """The seed manifest baked once per session (StoredImage; .disk_path is disk.raw)."""
    store_root = tmp_path_factory.mktemp("bake-store") / "images"
    manifest = load_manifest(SEED_MANIFEST)
    result = bake(manifest, bake_options(store_root), say=lambda _text: None)
    yield result.image
    shutil.rmtree(store_root, ignore_errors=True)
