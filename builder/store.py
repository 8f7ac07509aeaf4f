"""The local image store: images/<name>/<version>/{disk.raw,image.json}.

An entry appears whole or not at all: a bake writes into a staging directory
beside the destination (`images/<name>/.staging-<version>-<rand>/`) and
renames it into place only once the disk passed its boot tests. Replacing an
existing version (`--force`) swaps directories with renames too.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from builder.errors import UserError

IMAGE_JSON = "image.json"
DISK_FILE = "disk.raw"
STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"


def default_store_root() -> Path:
    """$AMIBAKE_STORE, else ./images (the project's image store)."""
    env = os.environ.get("AMIBAKE_STORE")
    return Path(env) if env else Path.cwd() / "images"


@dataclass(frozen=True)
class DiskInfo:
    file: str
    #: `algorithm:hex` of the disk's bytes (builder.disk_digest): sha256-blocks-512k,
    #: or sha256 for a record written before it (image.json's `sha256: <hex>`)
    digest: str
    apparent_size: int
    used_size: int

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DiskInfo:
        digest = doc["digest"] if "digest" in doc else "sha256:" + str(doc["sha256"])
        return cls(file=str(doc["file"]), digest=str(digest),
                   apparent_size=int(doc["apparent_size"]), used_size=int(doc["used_size"]))


@dataclass(frozen=True)
class StoredImage:
    """One stored image: its directory and its image.json."""

    dir: Path
    id: str
    name: str
    version: str
    roles: tuple[str, ...]
    architecture: str
    boot_mode: str
    volume_size_gib: int
    inputs: dict[str, str]
    inputs_digest: str
    disk: DiskInfo
    packages: dict[str, str]
    build_time: str
    builder_version: str
    boot_test: dict[str, Any] = field(default_factory=dict)
    #: where the app's code came from: {"code": sample|none|path|git|tarball, and for
    #: the team's own code: commit, tarball_sha256, tree_digest, dirty, ...}
    app: dict[str, Any] = field(default_factory=dict)

    @property
    def disk_path(self) -> Path:
        return self.dir / self.disk.file

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("dir")
        doc["roles"] = list(self.roles)
        return doc

    @classmethod
    def from_json(cls, directory: Path, doc: dict[str, Any]) -> StoredImage:
        return cls(
            dir=directory,
            id=doc["id"],
            name=doc["name"],
            version=doc["version"],
            roles=tuple(doc["roles"]),
            architecture=doc["architecture"],
            boot_mode=doc["boot_mode"],
            volume_size_gib=int(doc["volume_size_gib"]),
            inputs=dict(doc["inputs"]),
            inputs_digest=doc["inputs_digest"],
            disk=DiskInfo.from_json(doc["disk"]),
            packages=dict(doc["packages"]),
            build_time=doc["build_time"],
            builder_version=doc["builder_version"],
            boot_test=dict(doc.get("boot_test") or {}),
            app=dict(doc.get("app") or {}),
        )

    @classmethod
    def load(cls, directory: Path) -> StoredImage:
        path = directory / IMAGE_JSON
        try:
            return cls.from_json(directory, json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a valid image record ({exc})") from exc


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _versions(self, name: str) -> list[StoredImage]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = []
        for d in base.iterdir():
            if d.name.startswith(".") or not (d / IMAGE_JSON).is_file():
                continue
            try:
                Version(d.name)
            except InvalidVersion:
                continue
            found.append(StoredImage.load(d))
        return sorted(found, key=lambda i: i.parsed_version)

    def list(self, name: str | None = None) -> list[StoredImage]:
        """Every stored image (of `name`), by name then version, oldest first."""
        if name is not None:
            return self._versions(name)
        if not self.root.is_dir():
            return []
        names = sorted(d.name for d in self.root.iterdir()
                       if d.is_dir() and not d.name.startswith("."))
        return [img for n in names for img in self._versions(n)]

    def find(self, name: str, version: str | Version) -> StoredImage | None:
        d = self.root / name / str(Version(str(version)))
        return StoredImage.load(d) if (d / IMAGE_JSON).is_file() else None

    def get(self, name: str, version: str | Version | None = None) -> StoredImage:
        """The image `name` at `version` (the newest when None); UserError if absent."""
        if version is None:
            images = self._versions(name)
            if not images:
                raise UserError(f"no stored image named {name} in {self.root}",
                                hint="bake one with `amibake bake MANIFEST`")
            return images[-1]
        image = self.find(name, version)
        if image is None:
            have = ", ".join(i.version for i in self._versions(name)) or "none"
            raise UserError(f"no stored image {name} {version} in {self.root} (have: {have})")
        return image

    def resolve(self, ref: str) -> StoredImage:
        """`name`, `name:version`, `name/version` or a local id `img-…`."""
        if ref.startswith("img-"):
            for image in self.list():
                if image.id == ref:
                    return image
            raise UserError(f"no stored image with id {ref} in {self.root}")
        name, sep, version = ref.replace("/", ":").partition(":")
        return self.get(name, version if sep else None)

    # ----------------------------------------------------------- writing

    @contextlib.contextmanager
    def staging(self, name: str, version: str | Version) -> Iterator[Path]:
        """A directory beside the destination; removed unless committed."""
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Path, image: StoredImage, *, replace: bool) -> StoredImage:
        """Write image.json into `staged` and rename it to images/<name>/<version>."""
        dest = self.root / image.name / str(Version(image.version))
        final = StoredImage.from_json(dest, image.to_json())
        record = staged / IMAGE_JSON
        record.write_text(json.dumps(final.to_json(), indent=2, sort_keys=True) + "\n")
        if dest.exists():
            if not replace:
                raise UserError(f"{dest} exists", hint="use --force to replace it")
            retired = Path(tempfile.mkdtemp(prefix=RETIRED_PREFIX, dir=dest.parent))
            os.replace(dest, retired / "old")
            os.replace(staged, dest)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staged, dest)
        return final

    def prune(self, name: str, keep: int) -> builtins.list[StoredImage]:
        """Remove all but the `keep` newest versions; the newest always stays."""
        keep = max(keep, 1)
        images = self._versions(name)
        doomed = images[:-keep] if len(images) > keep else []
        for image in doomed:
            retired = Path(tempfile.mkdtemp(prefix=RETIRED_PREFIX, dir=image.dir.parent))
            os.replace(image.dir, retired / "old")
            shutil.rmtree(retired, ignore_errors=True)
        return doomed

    def leftovers(self) -> builtins.list[Path]:
        """Staging and retired directories (of bakes that were killed)."""
        if not self.root.is_dir():
            return []
        return sorted(p for d in self.root.iterdir() if d.is_dir()
                      for p in d.iterdir()
                      if p.name.startswith((STAGING_PREFIX, RETIRED_PREFIX)))
