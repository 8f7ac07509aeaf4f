"""Can this manifest be baked? One place, keyed on facts about the release.

Some manifests describe stacks that render and validate but cannot be built
on the image's release: a PostgreSQL major the release does not ship, a Ruby
from source that needs an OpenSSL the release does not have. `bake` refuses
them at once with the reasons; `validate` calls them render-only (exit 0).
The facts are declared here per release (Debian's own package lists are
what they were read from), never inferred from a manifest's file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import Problem, UserError
from builder.manifest.model import Manifest, Tarball


@dataclass(frozen=True)
class ReleaseFacts:
    """What a Debian release ships that decides whether a stack builds on it."""

    name: str
    #: PostgreSQL majors with a `postgresql-N` package
    postgresql: tuple[str, ...]
    #: the OpenSSL (major.minor) that libssl-dev builds against
    openssl: str


#: Debian bookworm (12): postgresql-15 only; libssl-dev 3.0.
RELEASES: dict[str, ReleaseFacts] = {
    "bookworm": ReleaseFacts(name="bookworm", postgresql=("15",), openssl="3.0"),
}

#: Ruby from source → the newest OpenSSL (major.minor) its openssl extension builds
#: against: 1.8 (REE included), 1.9–2.3 need 1.0; 2.4–3.0 need 1.1; 3.1+ build with 3.0.
_RUBY_OPENSSL: tuple[tuple[tuple[int, int], str], ...] = (
    ((2, 4), "1.0"),
    ((3, 1), "1.1"),
)


def ruby_openssl_ceiling(tarball: Tarball) -> str | None:
    """The newest OpenSSL a source Ruby builds against; None when it has no such limit
    or its version is not known."""
    text = tarball.version or tarball.url.rsplit("/", 1)[-1]
    found = re.search(r"(?<![0-9])([0-9]+)\.([0-9]+)\.[0-9]+", text)
    if found is None:
        return None
    version = (int(found.group(1)), int(found.group(2)))
    return next((openssl for below, openssl in _RUBY_OPENSSL if version < below), None)


def _newer(a: str, b: str) -> bool:
    return tuple(int(x) for x in a.split(".")) > tuple(int(x) for x in b.split("."))


def bake_blockers(manifest: Manifest) -> list[Problem]:
    """Why `manifest` cannot be baked on its release (empty: it can), each at its line."""
    facts = RELEASES.get(manifest.image.release)
    if facts is None:
        return [Problem(manifest.where("image.release"),
                        f"no facts about {manifest.image.release} to bake with")]
    found: list[Problem] = []
    components = manifest.components
    ruby = components.ruby
    if ruby is not None and ruby.source == "tarball" and ruby.tarball is not None:
        ceiling = ruby_openssl_ceiling(ruby.tarball)
        if ceiling is not None and _newer(facts.openssl, ceiling):
            name = "REE" if "enterprise" in ruby.tarball.url else "Ruby"
            found.append(Problem(
                manifest.where("components.ruby.tarball.version"),
                f"{name} {ruby.tarball.version or ''} needs OpenSSL {ceiling}, "
                f"{facts.name} has {facts.openssl}".replace("  ", " ")))
    pg = components.postgresql
    if pg is not None and pg.version not in facts.postgresql:
        found.append(Problem(
            manifest.where("components.postgresql.version"),
            f"PostgreSQL {pg.version} is not in {facts.name} (it has "
            f"{', '.join(facts.postgresql)})"))
    return found


def render_only_reason(manifest: Manifest) -> str | None:
    """One line for `validate`: why the manifest is render-only, or None."""
    blockers = bake_blockers(manifest)
    if not blockers:
        return None
    return "; ".join(p.message for p in blockers)


def check_bakeable(manifest: Manifest) -> None:
    """Refuse at once (UserError, every reason at its line) what cannot be baked."""
    blockers = bake_blockers(manifest)
    if blockers:
        raise UserError(
            f"{manifest.source}: cannot be baked on {manifest.image.release}: "
            + "; ".join(p.message for p in blockers),
            hint="it renders and validates (render-only); bake a manifest whose stack the "
                 "release ships",
            problems=tuple(blockers))
