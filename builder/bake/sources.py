"""The host's apt sources: mmdebstrap takes these files as its mirror arguments.

No mirror host is ever written by amibake: the files the host's apt already
uses are passed on as they are (deb822 `.sources`, or a one-line
`sources.list`), and their contents feed the base layer's cache key.
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import UserError

DEFAULT_APT_DIR = Path("/etc/apt")


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
                current, key = {}, ""
            continue
        if line[0] in " \t" and key:
            current[key] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _deb822_uris(path: Path, release: str) -> list[str]:
    """Mirror URIs of the enabled `deb` stanzas of `path` that offer `release`."""
    uris: list[str] = []
    for stanza in _deb822_stanzas(path.read_text()):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in stanza.get("types", "").split() and release in stanza.get(
            "suites", ""
        ).split():
            uris += stanza.get("uris", "").split()
    return uris


def _one_line_uris(path: Path, release: str) -> list[str]:
    """Mirror URIs of the `deb` lines of a one-line sources file that offer `release`."""
    uris: list[str] = []
    for raw in path.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if words and words[0] == "deb":
            rest = [w for w in words[1:] if not w.startswith("[")]
            if len(rest) >= 2 and rest[1] == release:
                uris.append(rest[0])
    return uris


_URIS = {".sources": _deb822_uris, ".list": _one_line_uris}


def host_sources(release: str, apt_dir: Path = DEFAULT_APT_DIR) -> tuple[Path, ...]:
    """The host's apt sources files that offer `release`, in apt's order.

    Raises UserError when none does: amibake cannot pick a mirror by itself.
    """
    found: list[Path] = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file() and _one_line_uris(main_list, release):
        found.append(main_list)
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            uris = _URIS.get(path.suffix)
            if uris is not None and uris(path, release):
                found.append(path)
    if not found:
        raise UserError(
            f"the host's apt sources ({apt_dir}) offer no `deb` entry for {release}",
            hint=f"add a Debian {release} entry to {parts}/debian.sources",
        )
    return tuple(found)


def release_mirror(release: str, apt_dir: Path = DEFAULT_APT_DIR) -> str:
    """The first mirror URI the host's apt sources use for `release`.

    For tools that take one mirror on their command line (mkosi in
    bench/bake.py): read from the host's configuration at run time, never
    written into a file.
    """
    path = host_sources(release, apt_dir)[0]
    uris = (_one_line_uris if path.name == "sources.list" else _URIS[path.suffix])(path, release)
    return uris[0]
