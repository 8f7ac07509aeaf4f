"""The one error type for user mistakes, and where problems point to."""

from __future__ import annotations

from dataclasses import dataclass

#: Every verb's exit status: done, problems found (one line each), bad usage.
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Location:
    """A place in a user's file: 1-based line and column."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col or 1}"


@dataclass(frozen=True)
class Problem:
    """One problem found in user input (a manifest, a config, an argument)."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class UserError(Exception):
    """A mistake the user can fix. The CLI prints it as one line plus a hint.

    `problems` carries every problem found when several were collected at once
    (a manifest with many mistakes): the CLI prints each on its own line.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        problems: tuple[Problem, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = problems

    def __str__(self) -> str:
        return self.message
