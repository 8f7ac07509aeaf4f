"""What a verb prints: human text, or one JSON document with --json."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Output:
    """Passed to every verb. Human progress goes to stderr, results to stdout.

    With `json_mode`, `result()` prints one JSON document and `say()` is
    silent, so stdout stays machine-readable.
    """

    json_mode: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def interactive(self) -> bool:
        """True when progress bars make sense (a terminal, not --json)."""
        return not self.json_mode and self.stderr.isatty()

    def say(self, text: str) -> None:
        """Progress for a human; silent with --json."""
        if not self.json_mode:
            print(text, file=self.stderr, flush=True)

    def result(self, data: dict[str, Any], text: str | None = None) -> None:
        """The verb's result: `data` as JSON, or `text` (default: key: value)."""
        if self.json_mode:
            json.dump(data, self.stdout, indent=2, sort_keys=True, default=str)
            self.stdout.write("\n")
        else:
            if text is None:
                text = "\n".join(f"{k}: {v}" for k, v in data.items())
            if text:
                print(text, file=self.stdout)
        self.stdout.flush()
