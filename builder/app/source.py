"""Where the app's code comes from: `app.code` resolved to a filtered tree.

    path     a directory (relative to the manifest); a dirty git checkout is
             refused unless --allow-dirty; its HEAD commit is recorded
    git      a repository (path or URL) and a ref, resolved to the exact
             commit; the tree is `git archive` of that commit
    tarball  a file or URL whose SHA-256 is checked before anything is
             unpacked; unpacked safely (safe_tar)

Every form ends the same way: the files, less what excludes.py leaves out,
copied into a fresh directory; the app's shape checked (a Rack/Rails app has
config.ru; a Bundler app has its Gemfile.lock); the tree digested (digest.py).
Every problem is one line that points at the manifest's `app.code` line.
"""

from __future__ import annotations

import os
import shutil
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from builder.app import excludes
from builder.app.digest import tree_digest
from builder.app.safe_tar import escapes, extract_tar
from builder.errors import UserError
from builder.manifest.model import AppCode, Manifest
from builder.proc import CommandError, run

#: `app.code` kinds that are the team's own code: they get an app layer.
OWN_CODE = ("path", "git", "tarball")
#: The largest tarball amibake reads (a Rails app with vendor/cache is ~100 MB).
TARBALL_LIMIT = 2 << 30


@dataclass(frozen=True)
class AppSource:
    """What went into the image's app layer, and how to name it."""

    kind: str  # sample | none | path | git | tarball
    location: str = ""
    ref: str = ""
    commit: str = ""
    tarball_sha256: str = ""
    tree_digest: str = ""
    dirty: bool = False
    #: the filtered tree (absent for sample and none)
    tree: Path | None = None

    @property
    def own(self) -> bool:
        """Is this the team's own code (an app layer), not sample/none?"""
        return self.kind in OWN_CODE

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.kind}
        if self.own:
            doc.update(location=self.location, ref=self.ref, commit=self.commit,
                       tarball_sha256=self.tarball_sha256, tree_digest=self.tree_digest,
                       dirty=self.dirty)
        return doc


def resolve(manifest: Manifest, work: Path, *, allow_dirty: bool = False) -> AppSource:
    """`manifest.app.code` as an AppSource; its tree (if any) under `work` (absent)."""
    code = manifest.app.code
    if isinstance(code, str):
        return AppSource(kind=code)
    base = manifest.source.parent if manifest.source.name != "<memory>" else Path.cwd()
    work.mkdir(parents=True)
    tree = work / "tree"
    if code.kind == "path":
        found = _from_path(manifest, code, base, tree, allow_dirty)
    elif code.kind == "git":
        found = _from_git(manifest, code, base, tree, work)
    else:
        found = _from_tarball(manifest, code, base, tree, work)
    check_app_shape(tree, manifest, f"app.code.{code.kind}")
    return AppSource(**{**found, "tree": tree, "tree_digest": tree_digest(tree)})


def _fail(manifest: Manifest, where: str, message: str, hint: str = "") -> UserError:
    return UserError(f"{manifest.where(where)}: {message}", hint=hint)


# ------------------------------------------------------------------- path


def _from_path(manifest: Manifest, code: AppCode, base: Path, tree: Path,
               allow_dirty: bool) -> dict[str, Any]:
    where = "app.code.path"
    source = (base / code.path).resolve()
    if not source.is_dir():
        raise _fail(manifest, where, f"app.code.path: {source} is not a directory")
    commit, dirty = "", False
    top = _git(["rev-parse", "--show-toplevel"], source, check=False)
    if top is not None:
        commit = _git(["rev-parse", "--verify", "HEAD^{commit}"], source, check=False) or ""
        status = _git(["status", "--porcelain", "--untracked-files=normal", "--", "."],
                      source) or ""
        dirty = bool(status.strip())
        if dirty and not allow_dirty:
            first = status.strip().splitlines()[0].split(maxsplit=1)[-1]
            raise _fail(manifest, where,
                        f"app.code.path: {source} has uncommitted changes ({first} …)",
                        hint="commit them, or bake with --allow-dirty (the image then "
                             "records dirty: true)")
    only = None
    if top is not None:  # a checkout: what git ignores stays out too (vendor/bundle, coverage …)
        listed = run(["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others",
                      "--exclude-standard", "--", "."], cwd=source, capture=True).stdout
        only = {name for name in listed.split("\0") if name}
    copy_filtered(source, tree, only)
    return {"kind": "path", "location": str(source), "commit": commit, "dirty": dirty}


def _git(args: list[str], cwd: Path, *, check: bool = True) -> str | None:
    proc = run(["git", "-c", "safe.directory=*", *args], cwd=cwd, capture=True, check=check)
    return proc.stdout.strip() if proc.returncode == 0 else None


# ------------------------------------------------------------------- git


def _git_location(code: AppCode, base: Path) -> str:
    """A URL as written; a path relative to the manifest made absolute."""
    if "://" in code.git or (":" in code.git.split("/")[0] and not code.git.startswith(".")):
        return code.git
    return str((base / code.git).resolve())


def _from_git(manifest: Manifest, code: AppCode, base: Path, tree: Path,
              work: Path) -> dict[str, Any]:
    location = _git_location(code, base)
    repo = work / "repo.git"
    try:
        run(["git", "-c", "protocol.ext.allow=never", "clone", "--quiet", "--bare",
             "--no-tags", "--", location, repo], capture=True)
    except CommandError as err:
        raise _fail(manifest, "app.code.git",
                    f"app.code.git: cannot clone {location}: {_last_line(err.stderr)}") from None
    run(["git", "-C", repo, "fetch", "--quiet", "--tags", "--", location], capture=True,
        check=False)
    commit = _git(["rev-parse", "--verify", "--end-of-options", f"{code.ref}^{{commit}}"],
                  repo, check=False)
    if commit is None:
        raise _fail(manifest, "app.code.ref",
                    f"app.code.ref: {code.ref!r} is not a tag, branch or commit of {location}",
                    hint="`git ls-remote` lists its tags and branches")
    archive = work / "archive.tar"
    run(["git", "-C", repo, "archive", "--format=tar", f"--output={archive}", commit],
        capture=True)
    raw = work / "raw"
    extract_tar(archive, raw, lambda m: _fail(manifest, "app.code.git", f"app.code.git: {m}"))
    copy_filtered(raw, tree)
    return {"kind": "git", "location": location, "ref": code.ref, "commit": commit}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "git failed"


# ------------------------------------------------------------------- tarball


def _from_tarball(manifest: Manifest, code: AppCode, base: Path, tree: Path,
                  work: Path) -> dict[str, Any]:
    where = "app.code.tarball"
    archive = work / "app.tar"
    location = _fetch(manifest, code.tarball, base, archive)
    import hashlib

    h = hashlib.sha256()
    with archive.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != code.sha256:
        raise _fail(manifest, "app.code.sha256",
                    f"app.code.sha256: {location} has SHA-256 {h.hexdigest()}, not the "
                    "manifest's; nothing was unpacked",
                    hint="check where the tarball came from before changing sha256")
    raw = work / "raw"
    extract_tar(archive, raw, lambda m: _fail(manifest, where, f"app.code.tarball: {m}"))
    copy_filtered(_single_top(raw), tree)
    return {"kind": "tarball", "location": location, "tarball_sha256": code.sha256}


def _fetch(manifest: Manifest, text: str, base: Path, dest: Path) -> str:
    """Copy the tarball at `text` (path, file:// or http(s) URL) to `dest`, bounded."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme in ("http", "https"):
        from urllib.request import urlopen  # only here: ~40 ms of every bake's start

        try:
            with urlopen(text, timeout=60) as answer, dest.open("wb") as out:
                _copy_bounded(answer, out, manifest)
        except OSError as err:
            raise _fail(manifest, "app.code.tarball",
                        f"app.code.tarball: cannot download {text}: {err}") from None
        return text
    path = Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" \
        else base / text
    if parsed.scheme not in ("", "file"):
        raise _fail(manifest, "app.code.tarball",
                    f"app.code.tarball: {parsed.scheme}: URLs are not supported",
                    hint="use a path, a file:// URL or an http(s) URL")
    path = path.resolve()
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise _fail(manifest, "app.code.tarball",
                    f"app.code.tarball: {path} is not a file")
    with path.open("rb") as src, dest.open("wb") as out:
        _copy_bounded(src, out, manifest)
    return str(path)


def _copy_bounded(src: Any, out: Any, manifest: Manifest) -> None:
    total = 0
    while block := src.read(1 << 20):
        total += len(block)
        if total > TARBALL_LIMIT:
            raise _fail(manifest, "app.code.tarball",
                        f"app.code.tarball: larger than {TARBALL_LIMIT >> 30} GiB")
        out.write(block)


def _single_top(raw: Path) -> Path:
    """A tarball of one directory (`app-1.2/…`) is that directory's content."""
    entries = list(raw.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return raw


# ------------------------------------------------------------------- common


def copy_filtered(source: Path, dest: Path, only: set[str] | None = None) -> None:
    """Copy `source` to `dest` (absent) without what excludes.py leaves out.

    Regular files, directories and symbolic links only; a link must stay
    inside the tree (relative, no way out by `..`); modes are kept (setuid,
    setgid and sticky bits dropped), owners are not. With `only` (paths
    relative to `source`), files and links not named there are left out too,
    and directories are made only to hold what is copied.
    """
    dest.mkdir(mode=0o755)
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        rel_dir = PurePosixPath(here.relative_to(source).as_posix())
        keep = []
        for name in sorted(dirnames):
            rel = rel_dir / name
            full = here / name
            if full.is_symlink():
                filenames.append(name)  # a link to a directory is copied as a link
                continue
            if excludes.excluded_dir(rel):
                continue
            if only is None:
                _make_dir(dest / rel, full)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = rel_dir / name
            full = here / name
            if only is not None and rel.as_posix() not in only:
                continue
            if excludes.excluded_file(rel, full):
                continue
            st = full.lstat()
            target = dest / rel
            if only is not None:
                _make_parents(source, dest, rel)
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(full)
                check_link(rel, link)
                os.symlink(link, target)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(full, target, follow_symlinks=False)
                os.chmod(target, stat.S_IMODE(st.st_mode) & 0o777)
            else:
                raise UserError(f"{full}: not a file, directory or link; an app tree holds "
                                "none of those (devices, FIFOs, sockets)")


def _make_dir(target: Path, like: Path) -> None:
    target.mkdir(mode=0o755)
    os.chmod(target, stat.S_IMODE(like.lstat().st_mode) & 0o777 | 0o700)


def _make_parents(source: Path, dest: Path, rel: PurePosixPath) -> None:
    for i in range(1, len(rel.parts)):
        part = PurePosixPath(*rel.parts[:i])
        if not (dest / part).is_dir():
            _make_dir(dest / part, source / part)


def check_link(rel: PurePosixPath, link: str) -> None:
    """A symbolic link at `rel` pointing to `link` must stay inside the app tree."""
    if escapes(rel, link):
        raise UserError(f"{rel}: a link that points outside the app ({link})",
                        hint="an app's links must be relative and stay inside its tree")


def check_app_shape(tree: Path, manifest: Manifest, where: str) -> None:
    """A Rack or Rails app has config.ru; a Bundler app (and every Rails app) its
    Gemfile.lock."""
    if not (tree / "config.ru").is_file():
        raise _fail(manifest, where, f"{where}: not a Rack or Rails app (no config.ru at its "
                                     "top)", hint="point it at the app's root directory")
    rails = (tree / "config" / "application.rb").is_file()
    if (rails or (tree / "Gemfile").is_file()) and not (tree / "Gemfile.lock").is_file():
        what = "a Rails app" if rails else "a Bundler app"
        raise _fail(manifest, where, f"{where}: {what} without Gemfile.lock",
                    hint="run `bundle lock` and commit Gemfile.lock: the image installs "
                         "exactly the locked gems")
