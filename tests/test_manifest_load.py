"""Every manifest under manifests/ loads; the seed's values are what it says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from packaging.version import Version

from builder.errors import UserError
from builder.manifest import Manifest, SecretRef, load_manifest, load_manifest_text
from builder.manifest.model import AppServer, ImageSpec, Ruby

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))


@pytest.fixture(scope="module")
def seed() -> Manifest:
    return load_manifest(ROOT / "manifests" / "smallpayroll.yaml")


@pytest.fixture(scope="module")
def seed2010() -> Manifest:
    return load_manifest(ROOT / "manifests" / "smallpayroll-2010.yaml")


def test_there_are_manifests() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"smallpayroll.yaml", "smallpayroll-2010.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_every_manifest_loads(path: Path) -> None:
    manifest = load_manifest(path)
    assert manifest.source == path
    assert manifest.roles and all(name == role.name for name, role in manifest.roles.items())


def test_seed_roles(seed: Manifest) -> None:
    assert list(seed.roles) == ["web", "app", "db", "all-in-one"]
    assert seed.roles["web"].components == ("nginx",)
    assert seed.roles["app"].components == ("ruby", "appserver")
    assert seed.roles["db"].components == ("postgresql",)
    assert set(seed.roles["all-in-one"].components) == {"nginx", "ruby", "appserver", "postgresql"}
    assert seed.baked_roles == ("web", "app", "db", "all-in-one")


def test_seed_values(seed: Manifest) -> None:
    assert seed.amibake == 1 and seed.name == "smallpayroll"
    assert seed.version == Version("1.0.0")
    nginx = seed.components.nginx
    assert nginx is not None
    assert (nginx.upstream_role, nginx.listen, nginx.gzip_static, nginx.page_cache) == (
        "app", 80, True, True)
    assert nginx.maintenance_flag == "/var/www/maintenance/on" and nginx.retry_after == 300
    assert nginx.error_pages == {"404": "/404.html", "500": "/500.html"}
    ruby = seed.components.ruby
    assert ruby is not None and ruby.source == "debian" and ruby.tarball is None
    assert {"ruby", "puma", "ruby-pg", "ruby-rack"} <= set(ruby.packages)
    app = seed.components.appserver
    assert app is not None and app.kind == "puma" and app.ports == (8000, 8001, 8002)
    pg = seed.components.postgresql
    assert pg is not None and pg.version == "15" and pg.instance_store == "ephemeral0"
    assert pg.mount_point == "/mnt" and pg.data_dir.startswith("/mnt/")
    assert [(r.address, r.method) for r in pg.hba] == [
        ("10.0.0.0/16", "scram-sha-256"), ("127.0.0.1/32", "scram-sha-256")]
    assert pg.settings["log_min_duration_statement"] == "500"
    db = seed.app.database
    assert db.password == SecretRef(store="ssm", name="/smallpayroll/db-password")
    assert (db.name, db.host_role) == ("payroll_prod", "db")
    assert seed.publish.regions == ("us-east-1", "eu-west-1")


def test_seed_cutover(seed: Manifest) -> None:
    cut = seed.cutover
    assert cut is not None
    assert cut.window_start == "2026-12-05T23:59:00-05:00"
    assert cut.timezone == "America/New_York"
    assert cut.files is not None and cut.files.destination.rstrip("/") == seed.app.uploads_dir
    assert cut.dns.provider == "route53" and cut.dns.hosted_zone_id
    assert cut.old_db.password is not None and cut.old_db.password.store == "ssm"
    assert cut.notice.contact


def test_seed_2010_is_the_old_stack(seed2010: Manifest) -> None:
    m = seed2010
    assert list(m.roles) == ["all-in-one"]
    ruby = m.components.ruby
    assert ruby is not None and ruby.source == "tarball" and ruby.tarball is not None
    assert ruby.tarball.prefix == "/opt/ree"
    assert ruby.tarball.url.endswith("/ruby-enterprise-1.8.7-2010.02.tar.gz")
    assert ruby.tarball.md5 == "4df7b09c01adfd711b0ab76837611542"
    app = m.components.appserver
    assert app is not None and app.kind == "mongrel_cluster" and app.ports == (8100, 8101)
    assert m.components.nginx is not None and m.components.nginx.balance == "fair"
    pg = m.components.postgresql
    assert pg is not None
    assert [(r.type, r.database, r.address, r.method) for r in pg.hba] == [
        ("host", "payroll_prod", "127.0.0.1/32", "md5")]
    assert m.image.backing == "instance-store"


def test_where_points_at_the_line(seed: Manifest) -> None:
    lines = seed.source.read_text().splitlines()
    for path, word in [("components.nginx.listen", "listen:"), ("roles.db", "db:"),
                       ("app.database.password.ssm", "ssm:"),
                       ("components.postgresql.hba.1", "127.0.0.1/32"),
                       ("publish.regions.1", "eu-west-1")]:
        loc = seed.where(path)
        assert loc.file == str(seed.source)
        assert word in lines[loc.line - 1], path
    listen = seed.where("components.nginx.listen")
    assert lines[listen.line - 1][listen.col - 1:].startswith("80")
    # unknown paths fall back to the nearest enclosing one
    assert seed.where("components.nginx.no.such") == seed.where("components.nginx")


def test_manifest_is_frozen(seed: Manifest) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        seed.name = "x"  # type: ignore[misc]


MINIMAL = """\
amibake: 1
name: shop
version: 2.1
app:
  name: shop
  server_name: shop.example.com
  database: {name: shop, user: shop, password: {secretsmanager: shop/db}, host_role: db}
components:
  nginx: {upstream_role: app, error_pages: {404: /404.html}}
  ruby: {}
  appserver: {count: 1}
  postgresql: {version: 15, data_dir: /mnt/pg}
roles:
  web: {components: [nginx]}
  app: {components: [ruby, appserver]}
  db: {components: [postgresql]}
image:
cutover: ~
"""


def test_defaults_and_scalar_text() -> None:
    m = load_manifest_text(MINIMAL, "shop.yaml")
    assert m.version == Version("2.1")                         # a YAML float, read as written
    assert m.components.ruby == Ruby()                         # `{}` gives the defaults
    assert m.components.appserver == AppServer(count=1)
    assert m.components.postgresql is not None and m.components.postgresql.version == "15"
    assert m.components.nginx is not None and m.components.nginx.error_pages == {"404": "/404.html"}
    assert m.app.database.password == SecretRef(store="secretsmanager", name="shop/db")
    assert m.cutover is None
    assert m.publish.regions == ("us-east-1",)
    assert m.image.roles == () and m.baked_roles == ("web", "app", "db")


def test_empty_section_means_its_defaults() -> None:
    assert load_manifest_text(MINIMAL, "shop.yaml").image == ImageSpec()
    start, end = MINIMAL.index("app:\n"), MINIMAL.index("components:")
    text = MINIMAL[:start] + "app:\n" + MINIMAL[end:]
    with pytest.raises(UserError) as info:   # an empty `app:`: its required keys are missing
        load_manifest_text(text, "shop.yaml")
    assert [str(p) for p in info.value.problems] == [
        "shop.yaml:4:1: missing required key 'database' in app",
        "shop.yaml:4:1: missing required key 'name' in app",
        "shop.yaml:4:1: missing required key 'server_name' in app",
    ]


def test_duplicate_key_in_a_free_form_mapping() -> None:
    text = MINIMAL.replace("postgresql: {version: 15, data_dir: /mnt/pg}",
                           "postgresql:\n    settings:\n      work_mem: 4MB\n      work_mem: 8MB")
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "shop.yaml")
    assert [str(p) for p in info.value.problems] == [
        "shop.yaml:15:7: duplicate key 'work_mem' in components.postgresql.settings "
        "(first at line 14)"]


def test_crlf_and_bom_are_fine() -> None:
    text = "\ufeff" + MINIMAL.replace("image:\n", "").replace("\n", "\r\n")
    m = load_manifest_text(text, "crlf.yaml")
    assert m.where("components.appserver").line == 11


@pytest.mark.parametrize("written, value", [
    ("8000", 8000), ("8_000", 8000), ("0x1F40", 8000), ("017500", 8000), ("2:13:20", 8000),
    ("+8000", 8000),
])
def test_yaml_integer_forms(written: str, value: int) -> None:
    text = MINIMAL.replace("{count: 1}", f"{{count: 1, base_port: {written}}}")
    m = load_manifest_text(text, "shop.yaml")
    assert m.components.appserver is not None and m.components.appserver.base_port == value


def test_0o_is_a_string_in_yaml_1_1() -> None:
    text = MINIMAL.replace("appserver: {count: 1}", "appserver: {count: 0o10}")
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "shop.yaml")
    assert [p.message for p in info.value.problems] == [
        "components.appserver.count: expected an integer, got a string '0o10'"]
