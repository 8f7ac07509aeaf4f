"""What renderers produce: files, packages, services and boot-time setup."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class File:
    """One file put on an instance (baked into the image, or written by user-data)."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root:root"


@dataclass(frozen=True)
class Fragment:
    """A component's share of a role.

    `setup` lists on-instance scripts (absolute paths of files in `files`)
    that the dispatcher runs at boot, in order, before starting `services`.
    """

    component: str
    packages: tuple[str, ...] = ()
    files: tuple[File, ...] = ()
    services: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    """One part of user-data (a MIME part when there are several)."""

    content_type: str  # e.g. "text/cloud-config", "text/x-shellscript"
    filename: str
    content: bytes


@dataclass(frozen=True)
class RenderedRole:
    """A role's user-data: the parts, and the final bytes given to EC2."""

    manifest_name: str
    role: str
    baked: bool
    parts: tuple[Part, ...]
    raw: bytes  # assembled user-data before compression
    user_data: bytes  # what EC2 gets: `raw`, or gzip(raw) when raw > 16 KiB
    fragments: tuple[Fragment, ...]

    @property
    def gzipped(self) -> bool:
        return self.user_data[:2] == b"\x1f\x8b"

    @property
    def cloud_config(self) -> str:
        """The text of the (first) #cloud-config part."""
        for part in self.parts:
            if part.content_type == "text/cloud-config":
                return part.content.decode()
        raise LookupError("no cloud-config part")


@dataclass(frozen=True)
class ImageContent:
    """Everything a baked image carries for all its roles."""

    packages: tuple[str, ...]
    files: tuple[File, ...]
