"""A progress bar with rate and ETA on a terminal; silent otherwise (--json)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from builder.output import Output


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Thread-safe progress of `total` units (bytes unless `unit` says otherwise).

    Draws on `out.stderr` only when `out.interactive` (a terminal and not
    --json), at most `hz` times a second. `render()` is also usable for tests.
    """

    def __init__(
        self,
        out: Output,
        total: int,
        label: str,
        *,
        unit: str = "bytes",
        hz: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.total = max(total, 0)
        self.label = label
        self.unit = unit
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._last_draw = 0.0
        self._interval = 1.0 / hz
        self._lock = threading.Lock()
        self.enabled = out.interactive

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = max(total, 0)

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = self._clock()
            due = now - self._last_draw >= self._interval or self.done >= self.total
            if self.enabled and due:
                self._last_draw = now
                self.out.stderr.write("\r" + self.render(now))
                self.out.stderr.flush()

    def render(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        width = 24
        filled = int(width * min(frac, 1.0))
        bar = "#" * filled + "-" * (width - filled)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = _clock(eta) if eta != float("inf") else "--:--:--"
        if self.unit == "bytes":
            amounts = f"{_human(self.done)}/{_human(self.total)} {_human(rate)}/s"
        else:
            amounts = f"{self.done}/{self.total} {self.unit} {rate:.1f}/s"
        return f"{self.label} [{bar}] {frac * 100:5.1f}% {amounts} ETA {eta_text}"

    def finish(self) -> None:
        if self.enabled:
            with self._lock:
                self.out.stderr.write("\r" + self.render() + "\n")
                self.out.stderr.flush()
