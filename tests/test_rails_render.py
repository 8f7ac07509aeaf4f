"""What amibake renders around the team's own Rails app, read back by real parsers.

The manifest is smallpayroll's with `app.code` set to an own app (any form
but `sample`/`none`) and two app secrets. Checked: puma runs from the app's
own config (no --threads) and Requires the migration unit, which is a oneshot
ordered Before= every app server (systemd-analyze verify); database.yml is the
manifest's database with the connection from DATABASE_URL (Ruby's ERB + YAML);
the env setup resolves each secret by reference into a 0600 file that systemd
reads back, and refuses a value an EnvironmentFile cannot carry (bash); no
secret value in user-data or the image; roles.json names the references; the
image carries bundler and the build-only packages the bake purges.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.app.rails_build import APP_BUILD, BUILD_ONLY_PACKAGES, DATABASE_YML
from builder.manifest import load_manifest_text
from builder.manifest.model import Manifest, SecretRef
from builder.render import image_content, render_role
from builder.render.app import ENV_SETUP, MIGRATE, MIGRATE_UNIT
from builder.render.fragment import File
from tests.bake_fixture import copy_manifest, rack_seed

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "smallpayroll.yaml"
RAILS_APP = ROOT / "cloudinit" / "app-rails"


def rails_manifest(dest: Path) -> Path:
    """The seed manifest (the Rails sample by `path:`, its gems and SECRET_KEY_BASE)
    copied into `dest`, its `code:` line naming the sample by absolute path."""
    return copy_manifest(dest)


SECRETS = {"SECRET_KEY_BASE": SecretRef("ssm", "/smallpayroll/secret-key-base"),
           "PAYROLL_API_TOKEN": SecretRef("secretsmanager", "smallpayroll/api-token")}


def own_app_manifest() -> Manifest:
    m = load_manifest_text(MANIFEST.read_text(), MANIFEST)
    app = dataclasses.replace(m.app, code=("path", "app"), secrets=SECRETS)  # type: ignore[arg-type]
    return dataclasses.replace(m, app=app)


@pytest.fixture(scope="module")
def files() -> dict[str, File]:
    return {f.path: f for f in image_content(own_app_manifest()).files}


def text(files: dict[str, File], path: str) -> str:
    return files[path].content.decode()


def test_puma_runs_from_the_apps_own_config_after_the_migrations(files: dict[str, File]) -> None:
    unit = text(files, "/etc/systemd/system/amibake-app@.service")
    assert f"Requires={MIGRATE_UNIT}\nAfter={MIGRATE_UNIT}\n" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--threads" not in exec_start and "-C" not in exec_start.split()
    assert "--bind tcp://0.0.0.0:%i" in exec_start
    assert "RAILS_ENV=production" in unit and "RAILS_LOG_TO_STDOUT=1" in unit
    assert "RAILS_MAX_THREADS=4" in unit
    assert "EnvironmentFile=/etc/amibake/app.env" in unit


def test_the_units_pass_systemd_analyze_verify(files: dict[str, File], tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    for path in ("/etc/systemd/system/amibake-app@.service", f"/etc/systemd/system/{MIGRATE_UNIT}",
                 MIGRATE, "/usr/bin/puma"):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[path].content if path in files else b"#!/bin/sh\n")
        target.chmod(0o755)
    (root / "srv/app").mkdir(parents=True)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           MIGRATE_UNIT, "amibake-app@8000.service"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    migrate = text(files, f"/etc/systemd/system/{MIGRATE_UNIT}")
    assert "Type=oneshot" in migrate and "RemainAfterExit=yes" in migrate
    assert "Before=amibake-app@8000.service amibake-app@8001.service amibake-app@8002.service" \
        in migrate
    assert "User=app" in migrate and "WorkingDirectory=/srv/app" in migrate


def test_the_app_role_starts_the_migration_before_its_app_servers() -> None:
    rendered = render_role(own_app_manifest(), "app", baked=True)
    roles = json.loads(next(f for f in image_content(own_app_manifest()).files
                            if f.path == "/etc/amibake/roles.json").content)
    services = roles["roles"]["app"]["services"]
    assert services.index(MIGRATE_UNIT) < services.index("amibake-app@8000.service")
    assert roles["secrets"]["app:SECRET_KEY_BASE"] == {
        "store": "ssm", "name": "/smallpayroll/secret-key-base"}
    assert roles["secrets"]["app:PAYROLL_API_TOKEN"]["store"] == "secretsmanager"
    assert rendered.user_data  # renders (size limit and schema are render_role's own checks)


def test_database_yml_is_the_manifests_database_with_the_url_from_the_environment(
        files: dict[str, File], tmp_path: Path) -> None:
    path = tmp_path / "database.yml"
    path.write_bytes(files[DATABASE_YML].content)
    url = "postgres://payroll:p%40ss%3A%23%27@10.0.1.20:5432/payroll_prod"
    done = subprocess.run(
        ["ruby", "-rerb", "-ryaml", "-rjson", "-e",
         "puts JSON.generate(YAML.safe_load(ERB.new(File.read(ARGV[0])).result))", str(path)],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": url}, capture_output=True, text=True,
        check=True)
    assert json.loads(done.stdout) == {"production": {
        "adapter": "postgresql", "encoding": "unicode", "database": "payroll_prod",
        "username": "payroll", "port": 5432, "url": url, "pool": 5}}
    assert "10.0.1.20" not in files[DATABASE_YML].content.decode()


def run_env_setup(files: dict[str, File], tmp_path: Path,
                  values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app-env.sh"
    script.write_bytes(files[ENV_SETUP].content)
    tool = tmp_path / "secret"
    cases = "".join(f"    {shlex.quote(name)}) printf '%s' {shlex.quote(value)} ;;\n"
                    for name, value in values.items())
    tool.write_text(f"#!/bin/bash\ncase \"$1\" in\n{cases}    *) exit 1 ;;\nesac\n")
    tool.chmod(0o755)
    (tmp_path / "hosts.env").write_text('AMIBAKE_HOSTS_DB="10.0.1.20"\n')
    env = {"PATH": "/usr/bin:/bin", "AMIBAKE_SECRET_TOOL": str(tool),
           "AMIBAKE_HOSTS_ENV": str(tmp_path / "hosts.env"),
           "AMIBAKE_APP_ENV": str(tmp_path / "app.env")}
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                          check=False)


def test_secrets_are_resolved_at_boot_into_a_private_env_file(
        files: dict[str, File], tmp_path: Path) -> None:
    key_base = "ab" * 64
    token = 'tok "with" $dollar \\ and spaces'
    done = run_env_setup(files, tmp_path, {"db_password": "pw", "app:SECRET_KEY_BASE": key_base,
                                           "app:PAYROLL_API_TOKEN": token})
    assert done.returncode == 0, done.stderr
    env_file = tmp_path / "app.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    read = env_file.read_text()
    assert f"SECRET_KEY_BASE='{key_base}'" in read
    assert f"PAYROLL_API_TOKEN='{token}'" in read
    # the shell gives the value back as is (systemd's EnvironmentFile= has the
    # same rule: nothing is special inside single quotes)
    back = subprocess.run(["bash", "-c", f"set -a; . {env_file}; printf %s \"$PAYROLL_API_TOKEN\""],
                          capture_output=True, text=True, check=True).stdout
    assert back == token


@pytest.mark.parametrize("value", ["it's", "two\nlines", ""])
def test_a_secret_an_env_file_cannot_carry_is_refused_in_one_line(
        files: dict[str, File], tmp_path: Path, value: str) -> None:
    done = run_env_setup(files, tmp_path, {"db_password": "pw", "app:SECRET_KEY_BASE": value,
                                           "app:PAYROLL_API_TOKEN": "t"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "amibake: the secret for SECRET_KEY_BASE is empty or holds a quote or line break")
    assert not (tmp_path / "app.env").exists()


def test_no_secret_value_and_no_address_is_baked(files: dict[str, File]) -> None:
    blob = b"".join(f.content for f in files.values())
    assert b"/smallpayroll/secret-key-base" in blob  # the reference, in roles.json
    assert b"10.0.1.20" not in blob


def test_the_image_carries_bundler_and_the_build_packages_the_bake_purges() -> None:
    content = image_content(own_app_manifest())
    assert "bundler" in content.packages
    assert set(BUILD_ONLY_PACKAGES) <= set(content.packages)
    paths = {f.path for f in content.files}
    assert {APP_BUILD, MIGRATE, DATABASE_YML} <= paths
    tmpfiles = next(f for f in content.files if f.path.endswith("tmpfiles.d/amibake-app.conf"))
    assert b"d /srv/app/tmp 0750 app app -" in tmpfiles.content


def test_the_sample_manifest_renders_none_of_it() -> None:
    m = rack_seed(load_manifest_text(MANIFEST.read_text(), MANIFEST))
    paths = {f.path for f in image_content(m).files}
    assert not paths & {APP_BUILD, MIGRATE, f"/etc/systemd/system/{MIGRATE_UNIT}",
                        DATABASE_YML}
    assert "bundler" not in image_content(m).packages


def test_an_app_secret_may_not_replace_what_amibake_sets() -> None:
    text_ = MANIFEST.read_text().replace(
        "    SECRET_KEY_BASE: {ssm: /smallpayroll/secret-key-base}\n",
        "    DATABASE_URL: {ssm: /x}\n    LD_PRELOAD: {ssm: /y}\n    lower: {ssm: /z}\n")
    with pytest.raises(Exception) as err:
        load_manifest_text(text_, MANIFEST)
    message = str(err.value) + "".join(str(p) for p in getattr(err.value, "problems", ()))
    assert "DATABASE_URL is set by amibake" in message
    assert "LD_PRELOAD is set by amibake" in message
    assert "'lower' is not an environment variable name" in message
    assert os.path.basename(MANIFEST) in message


def test_an_own_app_is_checked_baked_only_and_is_clean(tmp_path: Path) -> None:
    """Its code is only in the image: no fried user-data to size or lint."""
    from builder.validate.check import check_manifest

    report = check_manifest(rails_manifest(tmp_path))
    assert report.problems == []
    assert {mode for modes in report.roles.values() for mode in modes} == {"baked"}
