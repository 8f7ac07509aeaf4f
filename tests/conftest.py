"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bake_fixture import baked_image  # noqa: F401  (session fixture: the seed image)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_root() -> Path:
    return ROOT
