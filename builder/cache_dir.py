"""Where amibake keeps what it can make again: layers, verdicts, compiled templates."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$AMIBAKE_CACHE_DIR, else $XDG_CACHE_HOME/amibake, else ~/.cache/amibake."""
    env = os.environ.get("AMIBAKE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "amibake"
