"""Actions: what a life-cycle verb creates, changes or deletes (all of it listed
first, so --dry-run prints exactly what a run would do)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Verb = Literal["create", "change", "delete", "keep"]


@dataclass(frozen=True)
class Action:
    verb: Verb
    kind: str  # image, snapshot, ssm-parameter, ...
    region: str
    ident: str
    reason: str = ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.verb:<6} {self.kind:<13} {self.region:<14} {self.ident}{why}"


@dataclass
class Actions:
    actions: list[Action] = field(default_factory=list)

    def add(self, verb: Verb, kind: str, region: str, ident: str, reason: str = "") -> None:
        self.actions.append(Action(verb, kind, region, ident, reason))

    def of(self, verb: Verb) -> list[Action]:
        return [a for a in self.actions if a.verb == verb]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.actions]

    def text(self) -> str:
        return "\n".join(str(a) for a in self.actions) or "nothing to do"
