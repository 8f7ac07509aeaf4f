"""`load_manifest(path) -> Manifest`: YAML with file:line:col for every problem.

Three passes, each collecting every problem it finds:
1. text → node tree (yaml_nodes): encoding, syntax, aliases, size;
2. node tree → dataclasses (convert): keys, types, enums, required keys;
3. cross checks (checks): references between roles and components, ports,
   networks, paths. They need a well-typed manifest, so they run only when
   pass 2 found nothing.
All problems of a file are raised together as one UserError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from builder.errors import Location, Problem, UserError
from builder.manifest import yaml_nodes as yn
from builder.manifest.checks import run_cross_checks
from builder.manifest.convert import INVALID, Converter
from builder.manifest.model import Manifest
from builder.manifest.scalars import one_line, short
from builder.manifest.secrets import secret_kind

HINT = "fix the lines above; `amibake schema` lists every setting"


def load_manifest(path: Path | str) -> Manifest:
    """Load and check one manifest; UserError listing every problem otherwise."""
    path = Path(path)
    try:
        source = yn.read(path)
    except yn.YamlProblem as err:
        raise _error(path, [err.problem]) from None
    return _from_source(source)


def load_manifest_text(text: str, path: Path | str = "<memory>") -> Manifest:
    """Load a manifest from a string (tests, stdin); `path` names it in problems."""
    path = Path(path)
    try:
        root = yn.compose(path, text)
    except yn.YamlProblem as err:
        raise _error(path, [err.problem]) from None
    return _from_source(yn.Source(path, text, root))


def _from_source(source: yn.Source) -> Manifest:
    path, root = source.path, source.root
    if root is None:
        raise _error(path, [Problem(Location(str(path), 1, 1),
                                    "the manifest is empty (expected a mapping of settings)")])
    if not isinstance(root, yn.MappingNode):
        raise _error(path, [Problem(
            source.loc(root),
            f"the top level must be a mapping of settings, not {yn.kind(root)}",
        )])
    conv = Converter(str(path))
    value = conv.dataclass(root, Manifest, "", source.loc(root))
    secrets = literal_secrets(source)
    if secrets:  # other problems at a secret's place could quote it: only the secret's
        hidden = {p.location for p in secrets}
        conv.problems = [p for p in conv.problems if p.location not in hidden] + secrets
    if value is INVALID or conv.problems:
        raise _error(path, conv.problems)
    manifest: Manifest = dataclasses.replace(value, source=path, locations=conv.locations)
    problems: list[Problem] = []

    def report(where: str, message: str) -> None:
        problems.append(Problem(manifest.where(where), one_line(message)))

    run_cross_checks(manifest, report)
    if problems:
        raise _error(path, problems)
    return manifest


def literal_secrets(source: yn.Source) -> list[Problem]:
    """A problem for every scalar that looks like a literal secret, by kind, never by value."""
    problems: list[Problem] = []
    for where, node in _scalars(source.root, ""):
        kind = secret_kind(node.value)
        if kind is not None:
            problems.append(Problem(source.loc(node), (
                f"{where or '(top)'}: {kind}, written literally (the value is not shown); "
                "keep secrets in a secret store and refer to them: {ssm: NAME} or "
                "{secretsmanager: NAME}")))
    return problems


def _scalars(node: yn.Node | None, path: str) -> Iterator[tuple[str, yn.ScalarNode]]:
    """(dotted path, node) of every scalar under `node`, mapping keys included."""
    if isinstance(node, yn.ScalarNode):
        yield path, node
    elif isinstance(node, yn.SequenceNode):
        for i, child in enumerate(node.value):
            yield from _scalars(child, f"{path}.{i}" if path else str(i))
    elif isinstance(node, yn.MappingNode):
        for key, child in node.value:
            name = short(str(key.value)) if isinstance(key, yn.ScalarNode) else "?"
            child_path = f"{path}.{name}" if path else name
            yield from _scalars(key, child_path)
            yield from _scalars(child, child_path)


def _error(path: Path, problems: list[Problem]) -> UserError:
    ordered = tuple(sorted(set(problems), key=lambda p: (p.location.line, p.location.col,
                                                        p.message)))
    count = len(ordered)
    noun = "problem" if count == 1 else "problems"
    return UserError(f"{path}: {count} {noun}", hint=HINT, problems=ordered)
