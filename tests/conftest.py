"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import botocore_models, file_order  # noqa: F401  (models read once a process)
from tests.bake_fixture import baked_image  # noqa: F401  (session fixture: the seed image)
from tests.marker_guard import (  # noqa: F401  (autouse: slow tools need their marker)
    _slow_tools_need_a_marker,
    _tool_guards,
    check_collection,
)

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    check_collection(items)
    file_order.slowest_files_first(config, items)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    file_order.record(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    file_order.save(session.config)


@pytest.fixture
def project_root() -> Path:
    return ROOT
