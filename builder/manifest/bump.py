"""`bump_version(path, part)`: write the next version into a manifest in place.

Only the bytes of the top-level `version:` value change: the node's start and
end marks give its exact span, so comments, ordering, quoting and line
endings elsewhere stay byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version

from builder.atomic import write_atomically
from builder.errors import Location, Problem, UserError
from builder.manifest import yaml_nodes as yn

Part = Literal["patch", "minor", "major"]
PARTS: tuple[str, ...] = ("patch", "minor", "major")


def next_version(current: Version, part: str) -> Version:
    """Increment `part` of major.minor.patch and zero what follows it.

    Pre-, post-, dev- and local parts are dropped (1.2.0rc1 → patch → 1.2.1);
    the epoch is kept; the number of components is kept unless `part` needs
    more (1.2 → patch → 1.2.1).
    """
    if part not in PARTS:
        raise UserError(f"cannot bump {part!r}", hint="use patch, minor or major")
    index = {"major": 0, "minor": 1, "patch": 2}[part]
    release = [*current.release, 0, 0, 0]
    release[index] += 1
    release[index + 1:] = [0] * (len(release) - index - 1)
    width = max(len(current.release), index + 1)
    epoch = f"{current.epoch}!" if current.epoch else ""
    return Version(epoch + ".".join(str(n) for n in release[:width]))


def bump_version(path: Path | str, part: str) -> Version:
    """Rewrite the manifest's `version:` to the next `part`; returns the new version."""
    path = Path(path)
    try:
        source = yn.read(path)
    except yn.YamlProblem as err:
        raise UserError(f"{path}: cannot bump the version", problems=(err.problem,)) from None
    node = _version_node(source)
    try:
        current = Version(node.value)
    except InvalidVersion:
        raise _problem(source, node, f"version {node.value!r} is not a PEP 440 version") from None
    new = next_version(current, part)
    start, end = node.start_mark.index, node.end_mark.index
    quote = {"'": "'", '"': '"'}.get(node.style or "", "")
    text = source.text[:start] + f"{quote}{new}{quote}" + source.text[end:]
    write_atomically(path, text.encode("utf-8"))
    return new


def _version_node(source: yn.Source) -> yn.ScalarNode:
    root = source.root
    where = Location(str(source.path), 1, 1)
    if not isinstance(root, yn.MappingNode):
        raise UserError(f"{source.path}: cannot bump the version",
                        problems=(Problem(where, "the top level is not a mapping"),))
    for key, value in root.value:
        if isinstance(key, yn.ScalarNode) and key.value == "version":
            if isinstance(value, yn.ScalarNode) and value.tag != yn.NULL and (
                value.style is None or value.style in "'\""
            ):
                return value
            raise _problem(source, value, "version must be a one-line scalar such as 1.2.0")
    raise UserError(f"{source.path}: cannot bump the version",
                    problems=(Problem(where, "no top-level `version:` key"),))


def _problem(source: yn.Source, node: yn.Node, message: str) -> UserError:
    return UserError(f"{source.path}: cannot bump the version",
                     problems=(Problem(source.loc(node), message),))
