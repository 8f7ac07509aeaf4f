"""The checks `validate`, `render` and `bake` all run, and the location of
each problem of a rendered role at the manifest line behind it.

`check_manifest(path)`: load (every load-time check), render every role fried
and baked (baked only for an own app: its code is only in the image),
cloud-init's schema and the lints, every problem collected.
`load_checked(path)`: the same, as a Manifest or one UserError listing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import Location, Problem, UserError
from builder.manifest.model import Manifest
from builder.render.assemble import CLOUD_CONFIG, split_user_data
from builder.render.fragment import RenderedRole
from builder.validate.lints import lint_user_data
from builder.validate.schema import schema_problems


@dataclass
class ManifestCheck:
    """Every problem of one manifest, and what its roles rendered to."""

    path: str
    manifest: Manifest | None = None
    roles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest is not None else ""


def check_manifest(path: Path, loaded: Manifest | None = None) -> ManifestCheck:
    """Load, render every role fried and baked, schema and lints: every problem.
    `loaded`: the manifest at `path` as load_manifest returned it (not loaded again)."""
    from builder.manifest import load_manifest
    from builder.render import render_role
    from builder.render.app import own_app

    report = ManifestCheck(str(path))
    try:
        manifest = loaded if loaded is not None else load_manifest(path)
    except UserError as err:
        report.problems += _problems(err, path)
        return report
    report.manifest = manifest
    # The team's own app reaches an instance only inside an image: no fried boot.
    modes = (True,) if own_app(manifest) else (False, True)
    for role in manifest.roles:
        for baked in modes:
            mode = "baked" if baked else "fried"
            try:
                rendered = render_role(manifest, role, baked=baked)
            except UserError as err:
                report.problems += _problems(err, path)
                continue
            report.roles.setdefault(role, {})[mode] = {
                "bytes": len(rendered.user_data),
                "raw_bytes": len(rendered.raw),
                "gzipped": rendered.gzipped,
            }
            report.problems += validate_rendered(manifest, rendered)
    return report


def load_checked(path: Path, loaded: Manifest | None = None) -> Manifest:
    """The manifest when `amibake validate` would call it clean; else one
    UserError with every problem (what render and bake start with).
    `loaded`: as for check_manifest."""
    report = check_manifest(path, loaded)
    if report.manifest is not None and not report.problems:
        return report.manifest
    count = len(report.problems)
    raise UserError(f"{path}: {count} problem{'s' if count != 1 else ''}",
                    hint="fix the lines above; `amibake validate` checks the same",
                    problems=tuple(report.problems))


def _problems(err: UserError, path: Path) -> list[Problem]:
    if err.problems:
        return list(err.problems)
    return [Problem(Location(str(path)), err.message)]


def validate_rendered(manifest: Manifest, rendered: RenderedRole) -> list[Problem]:
    """cloud-init's schema on every cloud-config part, then the lints. A part's
    YAML is parsed here only to place a problem at its manifest line: clean
    user-data (the usual case) is parsed once, by the lints."""
    mode = "baked" if rendered.baked else "fried"
    label = f"role {rendered.role} ({mode} user-data)"
    problems: list[Problem] = []
    parts = split_user_data(rendered.user_data)
    configs = [p for p in parts if p.content_type == CLOUD_CONFIG]
    for part in configs:
        issues = schema_problems(part.content)
        config = _safe_load(part.content) if issues else None
        for issue in issues:
            where = _locate(manifest, rendered, config, issue.path)
            problems.append(Problem(where, f"{label}: {issue.path or '(top)'}: {issue.message}"))
    lints = lint_user_data(rendered.user_data)
    config = _safe_load(configs[0].content) if lints and configs else None
    for lint in lints:
        where = _locate(manifest, rendered, config, lint.where)
        problems.append(Problem(where, f"{label}: {lint.where}: {lint.message} [{lint.code}]"))
    return problems


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _safe_load(content: bytes) -> object:
    try:
        return yaml.load(content, Loader=_LOADER)
    except yaml.YAMLError:
        return None


def _locate(manifest: Manifest, rendered: RenderedRole, config: object, path: str) -> Location:
    """The manifest line that produced the value at a cloud-config path."""
    role_path = f"roles.{rendered.role}"
    head, _, rest = path.partition(".")
    index = rest.partition(".")[0]
    if isinstance(config, dict) and index.isdigit():
        items = config.get(head)
        if isinstance(items, list) and int(index) < len(items):
            item = items[int(index)]
            ruby = manifest.components.ruby
            if head == "packages" and ruby is not None and item in ruby.packages:
                return manifest.where(f"components.ruby.packages.{ruby.packages.index(item)}")
            if head == "packages" and item in manifest.image.packages:
                return manifest.where(f"image.packages.{manifest.image.packages.index(item)}")
            for fragment in rendered.fragments:
                if head == "packages" and item in fragment.packages:
                    return manifest.where(_component_path(fragment.component, ""))
                if head == "write_files" and isinstance(item, dict) and any(
                    f.path == item.get("path") for f in fragment.files
                ):
                    return manifest.where(_component_path(fragment.component, ""))
    return manifest.where(role_path)


def _component_path(component: str, leaf: str) -> str:
    if component == "app":
        return "app"
    return f"components.{component}" + (f".{leaf}" if leaf else "")
