"""YAML nodes → model dataclasses, driven by the field types in model.py.

Nothing here knows about nginx or PostgreSQL: the dataclass annotations say
what each key holds. Every problem is collected (with the node's location)
instead of raised, so a file with ten mistakes reports ten lines.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Union

from packaging.version import InvalidVersion, Version

from builder.errors import Location, Problem
from builder.manifest import yaml_nodes as yn
from builder.manifest.model import SecretRef
from builder.manifest.scalars import BOOLS, did_you_mean, one_line, parse_int, short
from builder.manifest.yaml_nodes import MappingNode, Node, ScalarNode, SequenceNode

INT_LIMIT = 2**63
SECRET_STORES = ("ssm", "secretsmanager")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.\-/+=@:]+")


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


@dataclass
class Converter:
    file: str
    problems: list[Problem] = field(default_factory=list)
    locations: dict[str, Location] = field(default_factory=dict)

    def problem(self, where: Node | Location, message: str) -> Any:
        loc = where if isinstance(where, Location) else yn.location(self.file, where)
        self.problems.append(Problem(loc, one_line(message)))
        return INVALID

    # ------------------------------------------------------------ dispatch

    def value(self, node: Node, tp: Any, path: str, anchor: Location) -> Any:
        """Convert `node` to type `tp`; INVALID (and a problem) when it does not fit."""
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if _is_null(node) and len(args) < len(typing.get_args(tp)):
                return None
            return self.value(node, _union_arm(node, args), path, anchor)
        if origin is Literal:
            return self._literal(node, typing.get_args(tp), path)
        if origin is tuple:
            return self._sequence(node, typing.get_args(tp)[0], path)
        if origin is dict:
            return self._mapping(node, typing.get_args(tp)[1], path)
        if tp is SecretRef:
            return self._secret(node, path)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(node, typing.cast(type, tp), path, anchor)
        scalar = _SCALARS.get(tp)
        if scalar is None:  # a model type this converter does not know: a bug
            raise TypeError(f"unsupported model type {tp!r} at {path}")
        return scalar(self, node, path)

    # ------------------------------------------------------------ scalars

    def _scalar(self, node: Node, path: str, what: str) -> ScalarNode | None:
        if isinstance(node, ScalarNode) and node.tag in yn.SCALAR_TAGS:
            return node
        if isinstance(node, ScalarNode) and node.tag not in yn.SCALAR_TAGS:
            self.problem(node, f"{path}: unsupported YAML tag {node.tag!r}")
        else:
            self.problem(node, f"{path}: expected {what}, got {yn.kind(node)}")
        return None

    def _str(self, node: Node, path: str) -> Any:
        scalar = self._scalar(node, path, "a string")
        if scalar is None:
            return INVALID
        if scalar.tag in (yn.BOOL, yn.NULL):
            hint = f" (quote it: \"{scalar.value}\")" if scalar.tag == yn.BOOL else ""
            return self.problem(node, f"{path}: expected a string, got {yn.describe(node)}{hint}")
        return scalar.value  # ints, numbers and dates as written

    def _int(self, node: Node, path: str) -> Any:
        scalar = self._scalar(node, path, "an integer")
        if scalar is None:
            return INVALID
        if scalar.tag != yn.INT:
            return self.problem(node, f"{path}: expected an integer, got {yn.describe(node)}")
        text = scalar.value.replace("_", "")
        if len(text) > 40:
            return self.problem(node, f"{path}: integer {short(scalar.value)} is out of range")
        try:
            number = parse_int(text)
        except ValueError:
            return self.problem(node, f"{path}: {yn.describe(node)} is not a valid integer")
        if abs(number) >= INT_LIMIT:
            return self.problem(node, f"{path}: integer {short(scalar.value)} is out of range")
        return number

    def _bool(self, node: Node, path: str) -> Any:
        scalar = self._scalar(node, path, "true or false")
        if scalar is None:
            return INVALID
        if scalar.tag != yn.BOOL:
            return self.problem(node, f"{path}: expected true or false, got {yn.describe(node)}")
        value = BOOLS.get(scalar.value.lower())
        if value is None:
            return self.problem(node, f"{path}: expected true or false, got {yn.describe(node)}")
        return value

    def _version(self, node: Node, path: str) -> Any:
        text = self._str(node, path)
        if text is INVALID:
            return INVALID
        try:
            return Version(text)
        except InvalidVersion:
            return self.problem(
                node, f"{path}: {short(text)!r} is not a valid version (PEP 440, e.g. 1.2.0)"
            )

    def _literal(self, node: Node, choices: tuple[str, ...], path: str) -> Any:
        text = self._str(node, path)
        if text is INVALID or text in choices:
            return text
        message = f"{path}: {short(text)!r} is not one of {', '.join(choices)}"
        return self.problem(node, message + did_you_mean(text, choices))

    # ------------------------------------------------------------ collections

    def _unsupported_tag(self, node: Node, path: str) -> bool:
        if isinstance(node, (MappingNode, SequenceNode)) and node.tag not in (yn.MAP, yn.SEQ):
            self.problem(node, f"{_in(path)}unsupported YAML tag {node.tag!r}")
            return True
        return False

    def _sequence(self, node: Node, item: Any, path: str) -> Any:
        if self._unsupported_tag(node, path):
            return INVALID
        if not isinstance(node, SequenceNode):
            return self.problem(node, f"{path}: expected a list, got {yn.kind(node)}")
        values = []
        for i, child in enumerate(node.value):
            child_path = f"{path}.{i}"
            self.locations[child_path] = yn.location(self.file, child)
            values.append(self.value(child, item, child_path, self.locations[child_path]))
        return INVALID if _any_invalid(values) else tuple(values)

    def entries(self, node: Node, path: str) -> list[tuple[str, Node, Node]] | None:
        """(key, key node, value node) of a mapping; duplicates and odd keys reported."""
        if self._unsupported_tag(node, path):
            return None
        if not isinstance(node, MappingNode):
            what = path or "the top level"
            self.problem(node, f"{what}: expected a mapping, got {yn.kind(node)}")
            return None
        seen: dict[str, Node] = {}
        result: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag in (yn.NULL, yn.BOOL):
                self.problem(key_node, f"{_in(path)}keys must be plain names, "
                                       f"got {yn.describe(key_node)}")
                continue
            key = key_node.value
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.problem(key_node, f"duplicate key {short(key)!r}{_in_path(path)} "
                                       f"(first at line {first})")
                continue
            seen[key] = key_node
            result.append((key, key_node, value_node))
        return result

    def _mapping(self, node: Node, item: Any, path: str) -> Any:
        entries = self.entries(node, path)
        if entries is None:
            return INVALID
        values: dict[str, Any] = {}
        for key, key_node, value_node in entries:
            child_path = f"{path}.{key}"
            anchor = self._remember(child_path, key_node, value_node)
            if (isinstance(item, type) and dataclasses.is_dataclass(item) and item is not SecretRef
                    and _has_name_field(item)):
                values[key] = self.dataclass(value_node, item, child_path, anchor, name=key)
            else:
                values[key] = self.value(value_node, item, child_path, anchor)
        return INVALID if _any_invalid(values.values()) else values

    def _remember(self, path: str, key_node: Node, value_node: Node) -> Location:
        """Record where `path` is written: the value for scalars, else the key."""
        key_loc = yn.location(self.file, key_node)
        shown = value_node if isinstance(value_node, ScalarNode) else key_node
        self.locations[path] = yn.location(self.file, shown)
        return key_loc

    # ------------------------------------------------------------ structures

    def dataclass(
        self, node: Node, cls: type, path: str, anchor: Location, name: str | None = None
    ) -> Any:
        # an empty value (`image:` with everything commented out) is an empty mapping
        entries = [] if _is_null(node) else self.entries(node, path)
        if entries is None:
            return INVALID
        fields = yaml_fields(cls)
        kwargs: dict[str, Any] = {} if name is None else {"name": name}
        for key, key_node, value_node in entries:
            child_path = f"{path}.{key}" if path else key
            if key not in fields:
                message = f"unknown key {short(key)!r}{_in_path(path)}"
                self.problem(key_node, message + did_you_mean(key, tuple(fields)))
                continue
            child_anchor = self._remember(child_path, key_node, value_node)
            kwargs[key] = self.value(value_node, fields[key], child_path, child_anchor)
            if kwargs[key] is not INVALID and kwargs[key] is not None:
                self._check(cls, key, kwargs[key], child_path, value_node)
        for key in fields:
            if key not in kwargs and _required(cls, key):
                self.problem(anchor, f"missing required key {key!r}{_in_path(path)}")
                kwargs[key] = INVALID
        if _any_invalid(kwargs.values()):
            return INVALID
        return cls(**kwargs)

    def _check(self, cls: type, key: str, value: Any, path: str, node: Node) -> None:
        """Run the checks model.py declares with the field on a converted value."""
        meta = field_metadata(cls)[key]
        if (check := meta.get("check")) is not None and (message := check(value)):
            self.problem(node, f"{path}: {message}")
        items = value.items() if isinstance(value, dict) else enumerate(value) \
            if isinstance(value, tuple) else ()
        key_check = meta.get("key") if isinstance(value, dict) else None
        for index, item in items:
            where = self.locations.get(f"{path}.{index}", yn.location(self.file, node))
            message = key_check(index) if key_check is not None else None
            if message is None and (check := meta.get("item")) is not None:
                message = check(item)
            if message:
                self.problem(where, f"{path}.{short(str(index))}: {message}")

    def _secret(self, node: Node, path: str) -> Any:
        if isinstance(node, ScalarNode):
            return self.problem(
                node, f"{path}: a literal secret is not allowed; use a secret store reference "
                      "such as {ssm: /app/db-password} or {secretsmanager: app/db}",
            )
        entries = self.entries(node, path)
        if entries is None:
            return INVALID
        if len(entries) != 1 or entries[0][0] not in SECRET_STORES:
            keys = ", ".join(repr(short(k)) for k, _, _ in entries) or "none"
            return self.problem(node, f"{path}: a secret reference has exactly one key, ssm or "
                                      f"secretsmanager (got {keys})")
        store, _, value_node = entries[0]
        name = self._str(value_node, f"{path}.{store}")
        if name is INVALID:
            return INVALID
        if not _SECRET_NAME.fullmatch(name):
            return self.problem(value_node, f"{path}.{store}: {short(name)!r} is not a valid "
                                            "secret name")
        self.locations[f"{path}.{store}"] = yn.location(self.file, value_node)
        return SecretRef(store=store, name=name)  # type: ignore[arg-type]


_SCALARS: dict[Any, Callable[[Converter, Node, str], Any]] = {
    str: Converter._str, int: Converter._int, bool: Converter._bool, Version: Converter._version,
}


@cache
def yaml_fields(cls: type) -> dict[str, Any]:
    """YAML key → type for the fields of `cls` that are settings (they have help)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if "help" in f.metadata}


@cache
def field_metadata(cls: type) -> dict[str, Any]:
    """Setting name → its metadata (help, and the checks declared with it)."""
    return {f.name: f.metadata for f in dataclasses.fields(cls)}


def _union_arm(node: Node, args: list[Any]) -> Any:
    """The type of a union (`create | {id, subnets}`) that the node's kind is written
    in: a mapping is the dataclass arm, anything else the first other arm."""
    if len(args) == 1:
        return args[0]
    mapping = isinstance(node, MappingNode)
    return next((a for a in args if dataclasses.is_dataclass(a) == mapping), args[0])


def _required(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _has_name_field(cls: type) -> bool:
    return any(f.name == "name" and "help" not in f.metadata for f in dataclasses.fields(cls))


def _any_invalid(values: Iterable[Any]) -> bool:
    return any(v is INVALID for v in values)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == yn.NULL


def _in_path(path: str) -> str:
    return f" in {path}" if path else ""


def _in(path: str) -> str:
    return f"{path}: " if path else ""
