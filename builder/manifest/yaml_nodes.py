"""Read a YAML file into a node tree where every value knows its line and column.

PyYAML's `compose` keeps the marks that `safe_load` throws away. Here it is
wrapped so that no input, however broken, escapes as anything but a `Problem`:
unreadable files, non-UTF-8 bytes, control characters, syntax errors, aliases
(refused: they are how "billion laughs" documents blow up), nesting too deep
and files too large.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from builder.errors import Location, Problem

MAX_BYTES = 1024 * 1024
TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (TAG + t for t in ("str", "int", "float", "bool", "null"))
TIMESTAMP, MAP, SEQ = TAG + "timestamp", TAG + "map", TAG + "seq"
SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL, TIMESTAMP})

__all__ = ["MappingNode", "Node", "ScalarNode", "SequenceNode", "Source", "YamlProblem"]


class YamlProblem(Exception):
    """The file could not be turned into a node tree; carries the one problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class _AliasRefused(yaml.MarkedYAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader whose composer refuses aliases instead of sharing nodes."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(
                problem=f"aliases (*{event.anchor}) are not supported in manifests",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)  # type: ignore[misc]


@dataclass(frozen=True)
class Source:
    """A manifest's decoded text and node tree."""

    path: Path
    text: str
    root: Node | None

    def loc(self, node: Node) -> Location:
        return location(str(self.path), node)


def location(file: str, node: Node) -> Location:
    mark = node.start_mark
    return Location(file, mark.line + 1, mark.column + 1)


def _line_col(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


def decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a manifest, or YamlProblem pointing at the first bad byte."""
    name = str(path)
    if len(data) > MAX_BYTES:
        raise YamlProblem(Problem(
            Location(name, 1, 1),
            f"file is over {MAX_BYTES} bytes, the limit for a manifest",
        ))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, col = _line_col(data[: err.start].decode("utf-8", "replace"), err.start)
        raise YamlProblem(Problem(
            Location(name, line, col),
            f"not UTF-8 text: byte 0x{data[err.start]:02x} cannot be decoded",
        )) from None


def compose(path: Path, text: str) -> Node | None:
    """The node tree of `text` (None for an empty document)."""
    name = str(path)
    loader = None
    try:
        loader = _NoAliasLoader(text)
        return loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = err.problem or err.context or "syntax error"
        if problem.startswith("but ") and err.context:
            problem = f"{err.context}, {problem}"
        if "'\\t'" in problem:
            problem = "tab character where YAML expects indentation or a value; indent with spaces"
        elif not isinstance(err, _AliasRefused):
            problem = f"invalid YAML: {problem}"
        raise YamlProblem(Problem(Location(name, line, col), problem)) from None
    except yaml.reader.ReaderError as err:
        line, col = _line_col(text, err.position)
        raise YamlProblem(Problem(
            Location(name, line, col),
            f"invalid YAML: control character #x{err.character:04x} is not allowed",
        )) from None
    except RecursionError:
        raise YamlProblem(Problem(
            Location(name, 1, 1), "invalid YAML: nested too deeply",
        )) from None
    except yaml.YAMLError as err:  # any other PyYAML error, without a mark
        raise YamlProblem(Problem(Location(name, 1, 1), f"invalid YAML: {err}")) from None
    finally:
        if loader is not None:
            loader.dispose()


def read(path: Path) -> Source:
    """Read and compose one manifest file; YamlProblem if that fails."""
    try:
        # bounded: /dev/zero or a huge file cannot hang us; O_NONBLOCK: nor can a FIFO
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
                raise IsADirectoryError(0, "not a regular file" if not stat.S_ISDIR(mode)
                                        else "Is a directory")
            os.set_blocking(fd, True)
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise YamlProblem(Problem(
            Location(str(path)), f"cannot read: {err.strerror or err}",
        )) from None
    text = decode(path, data)
    return Source(path, text, compose(path, text))


def kind(node: Node) -> str:
    """What a node is, in words for error messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return {
        STR: "a string", INT: "an integer", FLOAT: "a number", BOOL: "a boolean",
        NULL: "an empty value", TIMESTAMP: "a date",
    }.get(node.tag, f"a value tagged {node.tag}")


def describe(node: Node) -> str:
    """`kind` plus the value, shortened, e.g. "a string 'eighty'"."""
    if isinstance(node, ScalarNode) and node.tag != NULL:
        value = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return f"{kind(node)} {value!r}"
    return kind(node)
