"""The bake-time build of the team's app (cloudinit/rails/app-build), run for real.

The image's app layer runs the script in a chroot of the image; here it runs
on this machine's Debian bookworm (the same Ruby, Bundler 2.3 and packaged
gems as the image) over a copy of the Rails sample, with an environment as
empty as the chroot's: Bundler frozen to Gemfile.lock, without development and
test, `--local` (nothing fetched), assets precompiled; a gem that is nowhere
or a lockfile that does not match the Gemfile ends with one line naming it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.app.rails_build import DATABASE_YML
from builder.render import image_content
from tests.test_rails_render import own_app_manifest
from tests.test_sample_rails import APP

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "cloudinit" / "rails" / "app-build"
PREFIX = "amibake-app-build: "


def build(app: Path, tmp_path: Path,
          database_yml: Path | None = None) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "RAILS_ENV": "production", "RACK_ENV": "production",
           # the image's /etc/amibake/rails/database.yml
           "AMIBAKE_DATABASE_YML": str(database_yml or tmp_path / "absent.yml")}
    return subprocess.run([str(BUILD), str(app)], cwd=app, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    copy = tmp_path / "app"
    shutil.copytree(APP, copy)
    return copy


def add_gem_to_lock(app: Path, name: str, version: str) -> None:
    """The gem in both Gemfile and Gemfile.lock: the lock matches, the gem is nowhere."""
    with (app / "Gemfile").open("a") as f:
        f.write(f'gem "{name}", "{version}"\n')
    lock = (app / "Gemfile.lock").read_text()
    lock = lock.replace("    nio4r (2.5.8)\n", f"    nio4r (2.5.8)\n    {name} ({version})\n")
    lock = lock.replace("  pg (~> 1.4)\n", f"  {name} (= {version})\n  pg (~> 1.4)\n")
    (app / "Gemfile.lock").write_text(lock)


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_the_rails_sample_builds_frozen_from_debian_gems_with_its_assets(
        app: Path, tmp_path: Path) -> None:
    lock = (app / "Gemfile.lock").read_bytes()
    done = build(app, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "from Debian's installed gems" in done.stderr
    config = (app / ".bundle" / "config").read_text()
    assert 'BUNDLE_FROZEN: "true"' in config
    assert 'BUNDLE_WITHOUT: "development:test"' in config
    assert (app / "Gemfile.lock").read_bytes() == lock  # frozen: never rewritten
    manifests = list((app / "public" / "assets").glob(".sprockets-manifest-*.json"))
    assert len(manifests) == 1
    assets = json.loads(manifests[0].read_text())["assets"]
    assert "application.css" in assets
    assert (app / "public" / "assets" / assets["application.css"]).is_file()
    # sprockets' cache is gone; bootsnap's (the Gemfile names it), filled by
    # loading the app once, stays for every boot of the image
    assert sorted(p.name for p in (app / "tmp" / "cache").iterdir()) == ["bootsnap"]
    assert "bootsnap: loading the app once" in done.stderr
    compiled = list((app / "tmp" / "cache" / "bootsnap" / "compile-cache-iseq").rglob("*"))
    assert len([p for p in compiled if p.is_file()]) > 100  # Rails itself, compiled
    assert last_line(done) == f"{PREFIX}built {app}"


def test_a_gem_in_neither_vendor_cache_nor_debian_is_named_in_one_line(
        app: Path, tmp_path: Path) -> None:
    add_gem_to_lock(app, "amibake_absent_gem", "1.0.3")
    done = build(app, tmp_path)
    assert done.returncode == 1
    assert last_line(done) == (
        f"{PREFIX}gem amibake_absent_gem (1.0.3) of Gemfile.lock is in neither vendor/cache "
        "nor Debian's installed gems: `bundle package` it, or add its Debian package")
    assert not (app / "public" / "assets").exists()


def test_a_lockfile_that_does_not_match_the_gemfile_is_refused(app: Path, tmp_path: Path) -> None:
    with (app / "Gemfile").open("a") as f:
        f.write('gem "amibake_unlocked_gem", "2.0"\n')
    done = build(app, tmp_path)
    assert done.returncode == 1
    assert last_line(done) == (
        f"{PREFIX}Gemfile.lock does not match Gemfile (added to the Gemfile: "
        "amibake_unlocked_gem (= 2.0)): run `bundle lock` and commit Gemfile.lock")


def test_a_gemfile_without_its_lock_is_refused(app: Path, tmp_path: Path) -> None:
    (app / "Gemfile.lock").unlink()
    done = build(app, tmp_path)
    assert done.returncode == 1
    assert last_line(done) == (
        f"{PREFIX}{app} has a Gemfile but no Gemfile.lock: run `bundle lock` and "
        "commit Gemfile.lock")


def test_a_rack_app_without_a_gemfile_has_nothing_to_build(tmp_path: Path) -> None:
    app = tmp_path / "rack"
    app.mkdir()
    (app / "config.ru").write_text("run ->(env) { [200, {}, ['ok']] }\n")
    done = build(app, tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in app.iterdir()) == ["config.ru"]


def test_the_manifests_database_yml_replaces_the_apps_own_even_a_link(
        app: Path, tmp_path: Path) -> None:
    """The rendered one (ERB reading DATABASE_URL), as the image holds it:
    precompiling reads it with no database to ask."""
    rendered = tmp_path / "database.yml"
    rendered.write_bytes(next(f.content for f in image_content(own_app_manifest()).files
                              if f.path == DATABASE_YML))
    outside = tmp_path / "outside.yml"
    outside.write_text("untouched\n")
    (app / "config" / "database.yml").unlink()
    (app / "config" / "database.yml").symlink_to(outside)
    done = build(app, tmp_path, rendered)
    assert done.returncode == 0, done.stderr
    target = app / "config" / "database.yml"
    assert not target.is_symlink() and target.read_bytes() == rendered.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644
    assert outside.read_text() == "untouched\n"
