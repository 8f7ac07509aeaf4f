"""What the rendered image does at first boot that bears on its speed: the host
keys cloud-init generates (a manifest setting), the role's units that start
beside cloud-init's network stage, bootsnap's cache made the app user's, and
the fried contender of bench/boot.py (the team's app carried in user-data)."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.loader import load_manifest_text
from builder.manifest.model import Manifest
from builder.render import image_content, render_role, split_user_data
from builder.render.role import APP_ARCHIVE

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"
ROLE_UNITS = ("/etc/systemd/system/amibake-app@.service",
              "/etc/systemd/system/amibake-migrate.service",
              "/etc/systemd/system/postgresql@.service.d/amibake-early-start.conf")


def seed_with(line: str) -> tuple[Manifest, str]:
    """The seed with `line` added under `image:` (after login_user)."""
    text = SEED.read_text()
    assert "\n  login_user: admin\n" in text
    text = text.replace("\n  login_user: admin\n", f"\n  login_user: admin\n  {line}\n", 1)
    path = ROOT / "manifests" / "host-keys.yaml"  # names the file in problems; never written
    return load_manifest_text(text, path), text


def image_file(manifest: Manifest, path: str) -> str:
    return next(f.content.decode() for f in image_content(manifest).files if f.path == path)


def cloud_config(user_data: bytes) -> dict[str, object]:
    doc = yaml.safe_load(split_user_data(user_data)[0].content)
    assert isinstance(doc, dict)
    return doc


def test_host_keys_are_ed25519_and_ecdsa_unless_the_manifest_asks_for_rsa() -> None:
    cfg = "/etc/cloud/cloud.cfg.d/90_amibake.cfg"
    default = yaml.safe_load(image_file(load_manifest(SEED), cfg))
    assert default["ssh_genkeytypes"] == ["ed25519", "ecdsa"]
    with_rsa, _ = seed_with("ssh_host_key_types: [ed25519, rsa]")
    assert yaml.safe_load(image_file(with_rsa, cfg))["ssh_genkeytypes"] == ["ed25519", "rsa"]


@pytest.mark.parametrize(("value", "column", "problem"), [
    ("[ed25519, dsa]", 33, "image.ssh_host_key_types.1: 'dsa' is not one of ed25519, ecdsa, rsa"),
    ("[]", 23, "image.ssh_host_key_types: needs at least one entry"),
    ("[rsa, ecdsa, rsa]", 23, "image.ssh_host_key_types: lists rsa more than once"),
    ("ed25519", 23, "image.ssh_host_key_types: expected a list"),
])
def test_a_bad_host_key_setting_is_one_line_at_its_place(value: str, column: int,
                                                         problem: str) -> None:
    with pytest.raises(UserError) as err:
        seed_with(f"ssh_host_key_types: {value}")
    line = SEED.read_text().splitlines().index("  login_user: admin") + 2
    where = f"{ROOT / 'manifests' / 'host-keys.yaml'}:{line}:{column}: "
    problems = [str(p) for p in err.value.problems]
    assert len(problems) == 1 and problems[0].startswith(where + problem), problems
    assert "\n" not in problems[0]


def test_the_role_units_start_beside_cloud_inits_network_stage() -> None:
    """PostgreSQL, the migration and the app servers: no default dependencies (so not
    after basic.target, which waits for cloud-init.service), and nothing they are
    ordered after waits for cloud-init either; still stopped at shutdown."""
    files = {f.path: f.content.decode() for f in image_content(load_manifest(SEED)).files}
    for path in ROLE_UNITS:
        unit = files[path]
        assert re.search(r"^DefaultDependencies=no$", unit, re.M), path
        after = {u for line in re.findall(r"^After=(.*)$", unit, re.M) for u in line.split()}
        assert not after & {"basic.target", "sysinit.target", "network-online.target",
                            "cloud-init.service", "postgresql.service"}, (path, after)
        assert "network.target" in after and "local-fs.target" in after, path
        assert re.search(r"^Conflicts=shutdown.target$", unit, re.M), path
        assert re.search(r"^Before=shutdown.target$", unit, re.M), path
    # on the database's machine the app's units follow this cluster, not the umbrella unit
    migrate = files["/etc/systemd/system/amibake-migrate.service"]
    assert "After=postgresql@15-main.service" in migrate


def test_bootsnaps_cache_becomes_the_app_users_at_boot() -> None:
    tmpfiles = image_file(load_manifest(SEED), "/usr/lib/tmpfiles.d/amibake-app.conf")
    assert "\nZ /srv/app/tmp/cache - app app -\n" in tmpfiles


def test_fried_user_data_carries_the_apps_tree_and_builds_it_before_the_dispatcher(
        tmp_path: Path) -> None:
    manifest = load_manifest(SEED)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(ROOT / "cloudinit" / "app-rails" / "Gemfile", arcname="./Gemfile")
    archive = buf.getvalue()
    config = cloud_config(render_role(manifest, "all-in-one", app_archive=archive).user_data)
    entry = next(e for e in config["write_files"] if e["path"] == APP_ARCHIVE)  # type: ignore[attr-defined]
    assert entry["encoding"] == "b64" and entry["defer"] is True
    assert entry["permissions"] == "0600"
    runcmd = config["runcmd"]
    assert isinstance(runcmd, list)
    build = runcmd[0][2]
    assert runcmd[0][:2] == ["sh", "-c"]
    assert f"tar -xzf {APP_ARCHIVE} -C /srv/app" in build
    assert "RAILS_ENV=production RACK_ENV=production /usr/lib/amibake/app-build /srv/app" in build
    assert runcmd[1:] == [["systemctl", "daemon-reload"], ["/usr/lib/amibake/amibake-dispatch"]]
    assert config["ssh_genkeytypes"] == ["ed25519", "ecdsa"]
