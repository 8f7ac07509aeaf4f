"""Python packages imported from a foreign tree, isolated from the venv's.

cloud-init's verdict depends on the packages it runs with: Debian bookworm's
PyYAML, jsonschema 4.10 and the format checkers jsonschema finds installed.
`IsolatedImports(tree)` runs code that sees only the standard library and
`tree` (Debian's extracted dist-packages): inside `with imports.active():`
the venv's third-party modules are out of `sys.modules` and its
site-packages off `sys.path`; on leaving, the foreign modules are put aside
(until the next `active()`) and the venv's come back. Neither side ever sees
the other's copy of a module, so the venv's jsonschema and PyYAML stay as
they were for the rest of amibake.

Only one thread may be inside at a time (a lock), and imports made by other
threads while one is inside would see the foreign tree: keep the block short.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

_STDLIB = tuple(
    os.path.realpath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")
)
_NEVER_HIDDEN = frozenset({"__main__", "builtins", "sys"})


@functools.cache
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


@functools.cache
def _in_stdlib(path: str) -> bool:
    # realpath() of each module's folder once, not of each of its ~1000 files
    head, tail = os.path.split(path)
    real = os.path.realpath(path) if os.path.islink(path) else os.path.join(_real_dir(head), tail)
    folders = real + os.sep
    return folders.startswith(_STDLIB) and not any(
        f"{os.sep}{name}{os.sep}" in folders for name in ("site-packages", "dist-packages")
    )


def _third_party(name: str, module: ModuleType | None) -> bool:
    """A module from outside the standard library (the venv's, or the foreign tree's)."""
    if module is None or name in _NEVER_HIDDEN:
        return False
    file = getattr(module, "__file__", None)
    if file:
        return not _in_stdlib(file)
    paths = list(getattr(module, "__path__", []) or [])  # a namespace package
    return bool(paths) and not all(_in_stdlib(p) for p in paths)


class IsolatedImports:
    def __init__(self, tree: Path) -> None:
        self.tree = str(tree)
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            saved_path = sys.path[:]
            venv = {name: module for name, module in list(sys.modules.items())
                    if _third_party(name, module)}
            for name in venv:
                del sys.modules[name]
            sys.modules.update(self._modules)
            sys.path[:] = [self.tree, *(p for p in saved_path if p and _in_stdlib(p))]
            try:
                yield
            finally:
                for name, module in list(sys.modules.items()):
                    if _third_party(name, module):
                        self._modules[name] = sys.modules.pop(name)
                sys.modules.update(venv)
                sys.path[:] = saved_path
