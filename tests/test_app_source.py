"""app.code: path, git and tarball sources resolved to a filtered, digested tree.

Real git and real tar archives on this machine (file paths only, no network).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.app.digest import tree_digest
from builder.app.source import AppSource, resolve
from builder.bake.pipeline import recipe_for
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.publish.context import app_commit
from builder.store import StoredImage
from tests.bake_fixture import ROOT, SEED_CODE_LINE, copy_manifest, rack_manifest

RAILS_SAMPLE = ROOT / "cloudinit" / "app-rails"

#: What must never reach the image, and what must (written into every test app).
SECRETS = {
    ".git/config": "[core]\n",
    "log/production.log": "a log\n",
    "tmp/cache/x": "scratch\n",
    "node_modules/left-pad/index.js": "module.exports = 1\n",
    "app/assets/node_modules/x.js": "1\n",
    ".env": "SECRET=1\n",
    ".env.production": "SECRET=2\n",
    "config/master.key": "0123456789abcdef\n",
    "config/credentials/production.key": "0123456789abcdef\n",
    "config/ssl/server.pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    "config/ssl/server.key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"
                             "-----END RSA PRIVATE KEY-----\n",
    "storage/blob": "uploaded\n",
}
KEPT = {
    "config.ru": "run ->(env) { [200, {}, ['ok']] }\n",
    "Gemfile": "source 'https://gems.example'\ngem 'rack'\n",
    "Gemfile.lock": "GEM\n  specs:\n    rack (2.2.4)\n",
    "lib/payroll.rb": "module Payroll; end\n",
    "config/ssl/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "config/credentials/production.yml.enc": "encrypted\n",
    "app/log/keep.rb": "# a log/ below the top is code\n",
}


def write_app(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True).stdout.strip()


def manifest_with(tmp_path: Path, code: str) -> Path:
    """The seed manifest in tmp_path with `app.code` replaced by `code` (flow YAML)."""
    return copy_manifest(tmp_path, (SEED_CODE_LINE, f"  code: {code}\n"))


def code_line(path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                if line.startswith("  code:"))


def resolved(tmp_path: Path, code: str, *, allow_dirty: bool = False) -> AppSource:
    manifest = load_manifest(manifest_with(tmp_path, code))
    return resolve(manifest, tmp_path / "work", allow_dirty=allow_dirty)


def files_in(tree: Path) -> set[str]:
    return {p.relative_to(tree).as_posix() for p in tree.rglob("*") if not p.is_dir()}


# --------------------------------------------------------------------- path


def test_path_keeps_the_code_and_leaves_out_secrets_and_scratch(tmp_path: Path) -> None:
    write_app(tmp_path / "myapp", {**SECRETS, **KEPT})
    app = resolved(tmp_path, "{path: myapp}")
    assert app.kind == "path" and app.tree is not None
    assert files_in(app.tree) == set(KEPT)
    assert app.commit == "" and not app.dirty
    assert app.tree_digest == tree_digest(app.tree)


def test_digest_is_content_only_and_sees_one_byte_and_the_exec_bit(tmp_path: Path) -> None:
    a = write_app(tmp_path / "a", KEPT)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "config.ru", (1, 1))
    assert tree_digest(a) == tree_digest(b)
    (b / "lib" / "payroll.rb").write_text("module Payroll; end \n")
    assert tree_digest(a) != tree_digest(b)
    shutil.rmtree(b)
    shutil.copytree(a, b)
    (b / "config.ru").chmod(0o755)
    assert tree_digest(a) != tree_digest(b)


def test_not_an_app_is_one_line_at_the_code_line(tmp_path: Path) -> None:
    write_app(tmp_path / "notapp", {"README": "hello\n"})
    path = manifest_with(tmp_path, "{path: notapp}")
    with pytest.raises(UserError) as err:
        resolve(load_manifest(path), tmp_path / "work")
    message = str(err.value)
    assert message.startswith(f"{path}:{code_line(path)}:")
    assert "not a Rack or Rails app" in message and "\n" not in message


def test_rails_app_without_lockfile_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "railsapp"
    shutil.copytree(RAILS_SAMPLE, app)
    (app / "Gemfile.lock").unlink()
    with pytest.raises(UserError, match=r":\d+:\d+: app.code.path: a Rails app without "
                                        r"Gemfile.lock"):
        resolved(tmp_path, "{path: railsapp}")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        resolved(tmp_path, "{path: nowhere}")


def test_dirty_checkout_refused_unless_allowed(tmp_path: Path) -> None:
    repo = write_app(tmp_path / "repo", KEPT)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    head = git(repo, "rev-parse", "HEAD")
    clean = resolved(tmp_path, "{path: repo}")
    assert clean.commit == head and not clean.dirty
    (repo / "lib" / "payroll.rb").write_text("module Payroll; VERSION = 2; end\n")
    path = manifest_with(tmp_path, "{path: repo}")
    with pytest.raises(UserError) as err:
        resolve(load_manifest(path), tmp_path / "work2")
    assert str(err.value).startswith(f"{path}:{code_line(path)}:")
    assert "uncommitted changes (lib/payroll.rb" in str(err.value)
    assert "--allow-dirty" in err.value.hint
    dirty = resolve(load_manifest(path), tmp_path / "work3", allow_dirty=True)
    assert dirty.dirty and dirty.commit == head
    assert dirty.tree_digest != clean.tree_digest
    assert app_commit(dirty.as_json()) == head + "+dirty"


def test_checkout_leaves_out_what_git_ignores(tmp_path: Path) -> None:
    repo = write_app(tmp_path / "repo", {**KEPT, ".gitignore": "/vendor/bundle/\ncoverage/\n",
                                         "vendor/bundle/ruby/x.so": "binary\n",
                                         "coverage/index.html": "report\n"})
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    app = resolved(tmp_path, "{path: repo}")
    assert app.tree is not None
    assert files_in(app.tree) == {*KEPT, ".gitignore"}
    assert not (app.tree / "vendor").exists() and not (app.tree / "coverage").exists()


# --------------------------------------------------------------------- git


def _repo_with_tag(tmp_path: Path) -> tuple[Path, str, str]:
    repo = write_app(tmp_path / "upstream", {**KEPT, ".env": "SECRET=1\n"})
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    git(repo, "tag", "v1.0")
    v1 = git(repo, "rev-parse", "HEAD")
    (repo / "lib" / "payroll.rb").write_text("module Payroll; VERSION = 2; end\n")
    git(repo, "commit", "-q", "-am", "v2")
    return repo, v1, git(repo, "rev-parse", "HEAD")


def test_git_ref_resolves_to_the_exact_commit(tmp_path: Path) -> None:
    repo, v1, v2 = _repo_with_tag(tmp_path)
    tagged = resolved(tmp_path, f"{{git: {repo.name}, ref: v1.0}}")
    assert tagged.kind == "git" and tagged.commit == v1 and tagged.ref == "v1.0"
    assert tagged.tree is not None and files_in(tagged.tree) == set(KEPT)
    by_sha = resolve(load_manifest(manifest_with(tmp_path, f"{{git: 'file://{repo}', "
                                                           f"ref: {v2}}}")),
                     tmp_path / "work2")
    assert by_sha.commit == v2 and by_sha.tree_digest != tagged.tree_digest
    assert app_commit(by_sha.as_json()) == v2


def test_git_ref_that_does_not_exist(tmp_path: Path) -> None:
    repo, _, _ = _repo_with_tag(tmp_path)
    path = manifest_with(tmp_path, f"{{git: {repo.name}, ref: v9.9}}")
    with pytest.raises(UserError) as err:
        resolve(load_manifest(path), tmp_path / "work")
    assert str(err.value).startswith(f"{path}:{code_line(path)}:")
    assert "'v9.9' is not a tag, branch or commit" in str(err.value)


def test_git_repository_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="app.code.git: cannot clone"):
        resolved(tmp_path, "{git: missing-repo, ref: v1}")


@pytest.mark.parametrize(("code", "message"), [
    ("{git: repo}", "needs `ref:`"),
    ("{path: a, git: b, ref: v1}", "exactly one of path, git or tarball (got path, git)"),
    ("{tarball: app.tgz}", "needs `sha256:`"),
    ("{path: a, ref: v1}", "app.code.ref goes with `git:`"),
    ("{git: repo, ref: -x}", "is not a git tag, branch or commit"),
    ("{git: repo, ref: a..b}", "is not a git tag, branch or commit"),
    ("{path: --upload-pack=x}", "must not start with '-'"),
    ("{tarball: app.tgz, sha256: abc}", "64 lower-case hex digits"),
    ("{}", "exactly one of path, git or tarball"),
    ("{paht: a}", "unknown key 'paht'"),
    ("shiny", "is not one of sample, none"),
])
def test_bad_code_forms_are_load_errors_with_a_line(tmp_path: Path, code: str,
                                                   message: str) -> None:
    path = manifest_with(tmp_path, code)
    with pytest.raises(UserError) as err:
        load_manifest(path)
    lines = [str(p) for p in err.value.problems]
    assert any(line.startswith(f"{path}:{code_line(path)}:") and message in line
               for line in lines), lines


# --------------------------------------------------------------------- tarball


def _tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _app_members(top: str = "myapp-1.2/") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [_file(top + rel, text.encode()) for rel, text in {**KEPT, **SECRETS}.items()]


def test_tarball_checked_then_unpacked_without_its_top_directory(tmp_path: Path) -> None:
    sha = _tarball(tmp_path / "app.tgz", _app_members())
    app = resolved(tmp_path, f"{{tarball: app.tgz, sha256: {sha}}}")
    assert app.kind == "tarball" and app.tarball_sha256 == sha and app.commit == ""
    assert app.tree is not None and files_in(app.tree) == set(KEPT)
    assert app_commit(app.as_json()) == f"sha256:{sha}"
    by_url = resolve(load_manifest(manifest_with(
        tmp_path, f"{{tarball: 'file://{tmp_path}/app.tgz', sha256: {sha}}}")), tmp_path / "w2")
    assert by_url.tree_digest == app.tree_digest


def test_tarball_digest_mismatch_unpacks_nothing(tmp_path: Path) -> None:
    _tarball(tmp_path / "app.tgz", _app_members())
    path = manifest_with(tmp_path, f"{{tarball: app.tgz, sha256: {'0' * 64}}}")
    with pytest.raises(UserError) as err:
        resolve(load_manifest(path), tmp_path / "work")
    assert f"{path}:{code_line(path)}:" in str(err.value)
    assert "nothing was unpacked" in str(err.value)
    assert not (tmp_path / "work" / "raw").exists()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


@pytest.mark.parametrize(("member", "message"), [
    (_file("../evil", b"x"), "absolute or with '..'"),
    (_file("/etc/evil", b"x"), "absolute or with '..'"),
    (_file("a/../../evil", b"x"), "absolute or with '..'"),
    (_link("a/out", "../../etc/passwd"), "a link that points outside"),
    (_link("a/abs", "/etc/passwd"), "a link that points outside"),
    (_link("a/hard", "/etc/passwd", tarfile.LNKTYPE), "a hard link outside"),
    (_device("a/null"), "a device, FIFO or other special file"),
])
def test_hostile_tarball_is_refused_before_writing(tmp_path: Path, member: tuple[
        tarfile.TarInfo, bytes | None], message: str) -> None:
    sha = _tarball(tmp_path / "app.tgz", [*_app_members("a/"), member])
    with pytest.raises(UserError, match=message):
        resolved(tmp_path, f"{{tarball: app.tgz, sha256: {sha}}}")
    assert not (tmp_path / "work" / "raw").exists()
    assert not (tmp_path / "evil").exists()


def test_file_through_an_earlier_link_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sha = _tarball(tmp_path / "app.tgz", [*_app_members("a/"), _link("a/dir", "lib"),
                                          _file("a/dir/x.rb", b"1")])
    with pytest.raises(UserError, match="is not a directory"):
        resolved(tmp_path, f"{{tarball: app.tgz, sha256: {sha}}}")


def test_not_a_tarball(tmp_path: Path) -> None:
    (tmp_path / "app.tgz").write_bytes(b"not a tar")
    sha = hashlib.sha256(b"not a tar").hexdigest()
    with pytest.raises(UserError, match="app.code.tarball: not a tar archive"):
        resolved(tmp_path, f"{{tarball: app.tgz, sha256: {sha}}}")


# --------------------------------------------------------------------- into the bake


def test_rails_sample_by_path_keys_the_app_layer_on_its_tree(tmp_path: Path) -> None:
    app = tmp_path / "railsapp"
    shutil.copytree(RAILS_SAMPLE, app)
    path = manifest_with(tmp_path, "{path: railsapp}")
    before = recipe_for(load_manifest(path))
    assert before.app.kind == "path" and before.app_layer is not None
    assert {"app", "app_layer"} <= set(before.inputs)
    again = recipe_for(load_manifest(path))
    assert again.inputs == before.inputs
    controller = next((app / "app" / "controllers").glob("*.rb"))
    controller.write_text(controller.read_text() + "\n# one more line\n")
    after = recipe_for(load_manifest(path))
    changed = {k for k in before.inputs if before.inputs[k] != after.inputs[k]}
    assert changed == {"app", "app_layer"}


def test_sample_has_no_app_layer(tmp_path: Path) -> None:
    recipe = recipe_for(load_manifest(rack_manifest(tmp_path)))  # the seed with `code: sample`
    assert recipe.app.kind == "sample" and recipe.app_layer is None
    assert "app_layer" not in recipe.inputs


def test_image_json_keeps_the_app_record(tmp_path: Path) -> None:
    write_app(tmp_path / "myapp", KEPT)
    app = resolved(tmp_path, "{path: myapp}")
    doc = {"id": "img-1", "name": "n", "version": "1", "roles": ["web"],
           "architecture": "x86_64", "boot_mode": "uefi", "volume_size_gib": 4, "inputs": {},
           "inputs_digest": "d", "disk": {"file": "disk.raw", "sha256": "s",
                                          "apparent_size": 1, "used_size": 1},
           "packages": {}, "build_time": "t", "builder_version": "v", "app": app.as_json()}
    image = StoredImage.from_json(tmp_path, doc)
    assert image.to_json()["app"]["tree_digest"] == app.tree_digest
    assert image.app["code"] == "path"


def test_app_layer_cache_keeps_only_what_finished(tmp_path: Path) -> None:
    from builder.bake.cache import LayerCache

    cache = LayerCache(tmp_path / "cache")
    with cache.app_staging("a" * 64) as keep:
        write_app(keep, KEPT)
    assert cache.app_tree("a" * 64) is not None
    with pytest.raises(RuntimeError), cache.app_staging("b" * 64) as keep:
        write_app(keep, KEPT)
        raise RuntimeError("the build failed")
    assert cache.app_tree("b" * 64) is None
    assert [p.name for p in (tmp_path / "cache" / "app").iterdir()] == ["a" * 64 + ".tree"]
    assert cache.prune(keep=0) and cache.app_tree("a" * 64) is None


def test_a_link_out_of_a_path_app_is_refused(tmp_path: Path) -> None:
    app = write_app(tmp_path / "myapp", KEPT)
    (app / "config" / "secrets.yml").symlink_to("/etc/shadow")
    with pytest.raises(UserError, match="a link that points outside the app"):
        resolved(tmp_path, "{path: myapp}")
    (app / "config" / "secrets.yml").unlink()
    (app / "config" / "inside.rb").symlink_to("../lib/payroll.rb")
    inside = resolve(load_manifest(manifest_with(tmp_path, "{path: myapp}")), tmp_path / "w2")
    assert inside.tree is not None and (inside.tree / "config" / "inside.rb").is_symlink()
