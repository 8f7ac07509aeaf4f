"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bake_fixture import baked_image  # noqa: F401  (session fixture: the seed image)
from tests.marker_guard import (  # noqa: F401  (autouse: slow tools need their marker)
    _slow_tools_need_a_marker,
    _tool_guards,
    check_collection,
)

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    check_collection(items)


@pytest.fixture
def project_root() -> Path:
    return ROOT
