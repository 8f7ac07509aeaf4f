"""The slowest test files first, so that no worker is left with a long file
at the end of a parallel run (`make test-fast`: -n N --dist loadfile
--no-loadscope-reorder; xdist's own order is by number of tests, which sends
a 5-test file that takes 30 s last). Imported into tests/conftest.py.

Each run adds the seconds each file took (setup, call and teardown of its
tests) to pytest's cache (.pytest_cache, key amibake/file-seconds); the next
run sorts the files by them, slowest first. A file not in the cache yet
counts as slow (it goes first); without a cache the order is the collection
order. Within a file the order never changes.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

CACHE_KEY = "amibake/file-seconds"
_seconds: dict[str, float] = defaultdict(float)


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def slowest_files_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)
    known: dict[str, float] = cache.get(CACHE_KEY, {}) if cache is not None else {}
    if not known:
        return
    slowest = max(known.values())
    # sorted() is stable: a file's tests keep their order and stay together
    items[:] = sorted(items, key=lambda item: -known.get(_file(item.nodeid), slowest + 1))


def record(report: pytest.TestReport) -> None:
    _seconds[_file(report.nodeid)] += report.duration


def save(config: pytest.Config) -> None:
    """In the controller (or a run without xdist): merge this run's files in."""
    cache = getattr(config, "cache", None)
    if cache is None or hasattr(config, "workerinput") or not _seconds:
        return
    known = cache.get(CACHE_KEY, {})
    known.update({name: round(seconds, 2) for name, seconds in _seconds.items()})
    cache.set(CACHE_KEY, known)
