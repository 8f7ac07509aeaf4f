"""The settings reference, derived from model.py (each setting is declared once).

`sections()` walks the model from `Manifest` down and describes every
dataclass: where it sits in the YAML, and each key's type, default and help.
`amibake schema` prints it as Markdown tables or JSON.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from packaging.version import Version

from builder.manifest.convert import yaml_fields
from builder.manifest.model import Manifest, SecretRef


@dataclass(frozen=True)
class Setting:
    key: str
    type: str
    default: str
    required: bool
    help: str


@dataclass(frozen=True)
class Section:
    name: str
    paths: tuple[str, ...]
    doc: str
    settings: tuple[Setting, ...]


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a setting's type holds (through Optional, tuple and dict)."""
    if dataclasses.is_dataclass(tp) and tp is not SecretRef:
        return typing.cast(type, tp)
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        arms = " or ".join(type_name(a) for a in inner)
        return f"{arms}, optional" if len(inner) < len(typing.get_args(tp)) else arms
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map of string to {type_name(typing.get_args(tp)[1])}"
    if tp is SecretRef:
        return "secret reference (`{ssm: NAME}` or `{secretsmanager: NAME}`)"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"{tp.__name__} (mapping)"
    return {str: "string", int: "integer", bool: "boolean", Version: "version (PEP 440)"}.get(
        tp, str(tp)
    )


def _yaml_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return "(its defaults)"
    return str(value)


def _default(f: dataclasses.Field[Any]) -> tuple[str, bool]:
    if f.default is not dataclasses.MISSING:
        return _yaml_text(f.default), False
    if f.default_factory is not dataclasses.MISSING:
        return _yaml_text(f.default_factory()), False
    return "required", True


def sections(root: type = Manifest) -> tuple[Section, ...]:
    """Every dataclass reachable from `root`, in the order a reader meets them."""
    order: list[type] = []
    paths: dict[type, list[str]] = {}

    def visit(cls: type, path: str) -> None:
        if cls not in paths:
            order.append(cls)
            paths[cls] = []
        paths[cls].append(path)
        for key, tp in yaml_fields(cls).items():
            child = _dataclass_in(tp)
            if child is None:
                continue
            origin = typing.get_origin(tp)
            suffix = ".<name>" if origin is dict else "[]" if origin is tuple else ""
            visit(child, f"{path}.{key}{suffix}" if path else f"{key}{suffix}")

    visit(root, "")
    result = []
    for cls in order:
        hints = yaml_fields(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if f.name not in hints:
                continue
            default, required = _default(f)
            rows.append(Setting(f.name, type_name(hints[f.name]), default, required,
                                f.metadata["help"]))
        doc = inspect.cleandoc(cls.__doc__ or "")
        result.append(Section(cls.__name__, tuple(paths[cls]), doc, tuple(rows)))
    return tuple(result)


def markdown(secs: tuple[Section, ...]) -> str:
    out = ["# Manifest settings", ""]
    for sec in secs:
        where = ", ".join(f"`{p}`" for p in sec.paths if p) or "top level"
        out += [f"## {sec.name} ({where})", "", sec.doc, "",
                "| key | type | default | help |", "| --- | --- | --- | --- |"]
        for s in sec.settings:
            cells = (f"`{s.key}`", s.type, "**required**" if s.required else f"`{s.default}`",
                     s.help.replace("|", "\\|"))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def as_json(secs: tuple[Section, ...]) -> dict[str, Any]:
    return {"sections": [dataclasses.asdict(s) for s in secs]}
