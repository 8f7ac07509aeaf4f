"""Rendering: golden files per role per manifest, determinism, assembly, image content.

The seed (manifests/smallpayroll.yaml) runs the Rails sample by `path:`, whose
code reaches an instance only in an image: its roles have baked goldens and
their fried rendering is refused. `smallpayroll-rack` is the seed with the
Rack sample (`code: sample`, tests.bake_fixture.rack_seed), the form fried
user-data carries: its goldens keep the fried documents.
"""

from __future__ import annotations

import email
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import builder
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.render import (
    USER_DATA_LIMIT,
    File,
    ImageContent,
    Part,
    image_content,
    render_role,
    role_fragments,
    split_user_data,
)
from builder.render.app import own_app
from builder.render.assemble import GZIP_THRESHOLD, mime_boundary
from builder.render.templates import render_template
from tests.bake_fixture import rack_seed

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def load(name: str) -> Manifest:
    return load_manifest(ROOT / "manifests" / name)


def rack() -> Manifest:
    """The seed with the Rack sample: the form fried user-data can carry."""
    return rack_seed(load("smallpayroll.yaml"))


#: golden name → manifest: every shipped manifest, and the seed's Rack form
VARIANTS = {**{p.stem: p.name for p in MANIFESTS}, "smallpayroll-rack": ""}


def variant(name: str) -> Manifest:
    return load(VARIANTS[name]) if VARIANTS[name] else rack()


def cases() -> list[tuple[str, str]]:
    return [(name, role) for name in VARIANTS for role in variant(name).roles]


def check_golden(path: Path, content: bytes) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review the diff"
    assert content == path.read_bytes(), (
        f"{path.relative_to(ROOT)} differs from the rendering: if the change is intended, "
        "run UPDATE_GOLDEN=1 pytest tests/test_render.py and review `git diff tests/golden`"
    )


def listing(content: ImageContent) -> bytes:
    lines = ["# packages"] + list(content.packages) + ["# files: mode owner sha256 path"]
    for f in content.files:
        lines.append(f"{f.mode:04o} {f.owner} {hashlib.sha256(f.content).hexdigest()} {f.path}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def placeholder_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Golden files are about rendered templates: H3's boot files (copied verbatim,
    see test_boot_files_are_included_verbatim) appear as a one-line placeholder."""
    from builder.render import base

    real = base.boot_files()

    def placeholders() -> tuple[File, ...]:
        return tuple(
            File(f.path, f"(verbatim copy of cloudinit/boot/{f.path.rpartition('/')[2]})\n"
                 .encode(), f.mode, f.owner)
            for f in real
        )

    monkeypatch.setattr(base, "boot_files", placeholders)


def test_there_are_manifests_to_render() -> None:
    assert {p.name for p in MANIFESTS} >= {"smallpayroll.yaml", "smallpayroll-2010.yaml"}


@pytest.mark.parametrize(("name", "role"), cases())
@pytest.mark.usefixtures("placeholder_boot")
def test_golden_user_data(name: str, role: str) -> None:
    manifest = variant(name)
    if not own_app(manifest):
        fried = render_role(manifest, role)
        check_golden(GOLDEN / name / f"{role}.user-data.txt", fried.raw)
    baked = render_role(manifest, role, baked=True)
    check_golden(GOLDEN / name / f"{role}.baked.user-data", baked.user_data)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.usefixtures("placeholder_boot")
def test_golden_image_content(name: str) -> None:
    content = listing(image_content(variant(name)))
    check_golden(GOLDEN / name / "image-content.txt", content)


def test_golden_directory_has_no_stale_files() -> None:
    expected = {f"{name}/image-content.txt" for name in VARIANTS}
    for name, role in cases():
        expected.add(f"{name}/{role}.baked.user-data")
        if not own_app(variant(name)):
            expected.add(f"{name}/{role}.user-data.txt")
    present = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*") if p.is_file()}
    assert present == expected


@pytest.mark.parametrize("role", ["web", "app", "db", "all-in-one"])
def test_fried_user_data_of_an_own_app_is_refused_at_its_code_line(role: str) -> None:
    """The seed's Rails app is only in an image: fried user-data would boot without
    it (and the all-in-one is over EC2's 16 KiB besides), so it is refused, one
    line at `app.code`, never written without the app."""
    manifest = load("smallpayroll.yaml")
    with pytest.raises(UserError) as err:
        render_role(manifest, role)
    code_line = next(i for i, line in enumerate(manifest.source.read_text().splitlines(), 1)
                     if line.startswith("  code:"))
    assert str(err.value).startswith(f"{manifest.source}:{code_line}:3: fried user-data "
                                     "cannot carry the team's own app (app.code: path)")
    assert "--baked" in err.value.hint


@pytest.mark.parametrize(("name", "role"), cases())
def test_rendering_is_deterministic(name: str, role: str) -> None:
    baked = own_app(variant(name))
    first = render_role(variant(name), role, baked=baked).user_data
    second = render_role(variant(name), role, baked=baked).user_data
    assert first == second


def test_output_is_identical_across_processes_and_hash_seeds() -> None:
    code = (
        "import hashlib, sys\n"
        "from pathlib import Path\n"
        "from builder.manifest import load_manifest\n"
        "from builder.render import render_role, image_content\n"
        "from builder.render.app import own_app\n"
        "h = hashlib.sha256()\n"
        "for p in sorted(Path('manifests').glob('*.yaml')):\n"
        "    m = load_manifest(p)\n"
        "    for r in m.roles:\n"
        "        h.update(render_role(m, r, baked=own_app(m)).user_data)\n"
        "        h.update(render_role(m, r, baked=True).user_data)\n"
        "    for f in image_content(m).files:\n"
        "        h.update(f.path.encode() + f.content)\n"
        "print(h.hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_role_marker_and_locale_are_in_every_user_data() -> None:
    for name, role in cases():
        manifest = variant(name)
        for baked in (True,) if own_app(manifest) else (False, True):
            text = render_role(manifest, role, baked=baked).cloud_config
            lines = text.splitlines()
            assert lines[0] == "#cloud-config"
            assert f"# amibake-role: {role}" in lines
            assert "locale: C.UTF-8" in lines


def test_fried_user_data_installs_everything_and_runs_the_dispatcher() -> None:
    import yaml

    manifest = rack()
    rendered = render_role(manifest, "all-in-one")
    config = yaml.safe_load(rendered.raw)
    assert config["runcmd"] == [
        ["systemctl", "daemon-reload"], ["/usr/lib/amibake/amibake-dispatch"]]
    assert {"nginx-light", "postgresql-15", "ruby", "puma", "ruby-pg", "ruby-rack"} <= set(
        config["packages"]
    )
    paths = {f["path"] for f in config["write_files"]}
    assert {
        "/etc/nginx/nginx.conf",
        "/etc/systemd/system/amibake-app@.service",
        "/srv/app/config.ru",
        "/etc/amibake/roles.json",
        "/usr/lib/amibake/amibake-dispatch",
        "/usr/lib/amibake/amibake-secret",
        "/usr/lib/amibake/setup/postgresql.sh",
    } <= paths
    assert all(f["defer"] is True for f in config["write_files"])  # after the packages
    roles = json.loads(next(
        f["content"] for f in config["write_files"] if f["path"] == "/etc/amibake/roles.json"
    ))
    assert list(roles["roles"]) == ["all-in-one"]
    entry = roles["roles"]["all-in-one"]
    setup = "/usr/lib/amibake/setup/"
    app_servers = ["amibake-app@8000.service", "amibake-app@8001.service",
                   "amibake-app@8002.service"]
    # the app's side first, its services queued as each is ready; the database
    # (mkfs, initdb) last, so the app servers boot meanwhile
    assert entry["steps"] == [
        {"component": "app", "setup": [setup + "app.sh", setup + "app-env.sh"],
         "services": []},
        {"component": "appserver", "setup": [], "services": app_servers},
        {"component": "nginx", "setup": [setup + "nginx.sh"], "services": ["nginx.service"]},
        {"component": "postgresql", "setup": [setup + "postgresql.sh"],
         "services": ["postgresql@15-main.service"]},
    ]
    assert entry["services"] == [*app_servers, "nginx.service", "postgresql@15-main.service"]


def test_baked_user_data_carries_only_the_role_and_instance_bits() -> None:
    import yaml

    manifest = load("smallpayroll.yaml")
    plain = render_role(manifest, "web", baked=True)
    assert yaml.safe_load(plain.user_data) == {"locale": "C.UTF-8"}
    assert not plain.gzipped
    with_hosts = render_role(
        manifest, "web", baked=True, hosts={"app": ("10.0.1.5", "10.0.1.6")},
        markers={"secrets-endpoint": "http://169.254.169.254/amibake-secrets"},
    )
    config = yaml.safe_load(with_hosts.user_data)
    assert config["write_files"] == [{
        "path": "/etc/amibake/hosts.env",
        "content": "# Addresses of other roles, for amibake's setup scripts (written by "
        'user-data).\nAMIBAKE_HOSTS_APP="10.0.1.5 10.0.1.6"\n',
    }]
    assert "# amibake-secrets-endpoint: http://169.254.169.254/amibake-secrets" in (
        with_hosts.cloud_config.splitlines()
    )


def test_bad_hosts_and_markers_are_user_errors() -> None:
    manifest = rack()
    with pytest.raises(UserError, match="bad address"):
        render_role(manifest, "web", hosts={"app": ("10.0.0.1; rm -rf /",)})
    with pytest.raises(UserError, match="marker"):
        render_role(manifest, "web", markers={"x": "two\nlines"})
    with pytest.raises(UserError, match="no role 'nope'"):
        render_role(manifest, "nope")


def test_image_content_is_the_union_of_every_role() -> None:
    manifest = load("smallpayroll.yaml")
    content = image_content(manifest)
    by_path = {f.path: f for f in content.files}
    for role in manifest.roles:
        for fragment in role_fragments(manifest, role):
            for file in fragment.files:
                assert by_path[file.path] == file
    assert {"nginx-light", "postgresql-15", "puma", "python3"} <= set(content.packages)
    assert list(content.packages) == sorted(set(content.packages))
    datasource = by_path["/etc/cloud/cloud.cfg.d/90_amibake.cfg"].content.decode()
    assert "datasource_list: [Ec2, NoCloud, None]" in datasource
    roles = json.loads(by_path["/etc/amibake/roles.json"].content)
    assert set(roles["roles"]) == {"web", "app", "db", "all-in-one"}
    assert roles["roles"]["web"]["services"] == ["nginx.service"]
    assert roles["roles"]["db"]["services"] == ["postgresql@15-main.service"]
    # the Rails sample: its migration unit first (the app servers Require it)
    assert roles["roles"]["app"]["services"] == ["amibake-migrate.service"] + [
        f"amibake-app@{p}.service" for p in (8000, 8001, 8002)]
    assert roles["all_services"] == sorted(roles["all_services"])
    assert roles["secrets"] == {
        "db_password": {"store": "ssm", "name": "/smallpayroll/db-password"},
        "app:SECRET_KEY_BASE": {"store": "ssm", "name": "/smallpayroll/secret-key-base"}}
    assert roles["login_user"] == "admin" and roles["version"] == 1


def test_boot_files_are_included() -> None:
    boot = builder.TEMPLATES_DIR / "boot"
    content = {f.path: f for f in image_content(load("smallpayroll.yaml")).files}
    sources = [p for p in sorted(boot.iterdir()) if p.is_file() and not p.name.endswith(".md")]
    assert sources, "cloudinit/boot/ is empty"
    for source in sources:
        if source.suffix == ".py":  # a shared module: inlined into the scripts, not shipped
            assert f"/usr/lib/amibake/{source.name}" not in content
            continue
        if source.suffix == ".service":
            file = content[f"/etc/systemd/system/{source.name}"]
            assert file.mode == 0o644
        else:
            file = content[f"/usr/lib/amibake/{source.name}"]
            assert file.mode == 0o755
        if file.content[:2] == b"#!" and b"python" in file.content.split(b"\n")[0]:
            continue  # shipped without docstrings: tests/test_render_docstrings.py
        assert file.content == source.read_bytes()


def test_image_roles_limit_what_is_baked() -> None:
    import dataclasses

    manifest = load("smallpayroll.yaml")
    web_only = dataclasses.replace(
        manifest, image=dataclasses.replace(manifest.image, roles=("web",))
    )
    content = image_content(web_only)
    assert "postgresql-15" not in content.packages
    roles = json.loads(
        next(f.content for f in content.files if f.path == "/etc/amibake/roles.json"))
    assert list(roles["roles"]) == ["web"]


def test_split_roles_are_configured_from_hosts_env() -> None:
    manifest = load("smallpayroll.yaml")
    files = {f.path: f for f in image_content(manifest).files}
    upstream = files["/etc/nginx/amibake/upstream-servers.conf"].content.decode()
    assert "server 127.0.0.1:8000;" in upstream and "server 127.0.0.1:8002;" in upstream
    assert b"AMIBAKE_HOSTS_APP" in files["/usr/lib/amibake/setup/nginx.sh"].content
    assert b"AMIBAKE_HOSTS_DB" in files["/usr/lib/amibake/setup/app-env.sh"].content


def test_2010_stack() -> None:
    manifest = load("smallpayroll-2010.yaml")
    content = {f.path: f for f in image_content(manifest).files}
    nginx = content["/etc/nginx/nginx.conf"].content.decode()
    assert "        fair;\n" in nginx
    assert "libnginx-mod-http-upstream-fair" in image_content(manifest).packages
    # systemd runs the cluster: no mongrel_cluster YAML that nothing reads; each
    # mongrel's pid and log directories are made by systemd for its unit.
    assert not any(path.startswith("/etc/mongrel_cluster") for path in content)
    unit = content["/etc/systemd/system/amibake-app@.service"].content.decode()
    assert "ExecStart=/opt/ree/bin/mongrel_rails start" in unit
    assert "--pid /run/amibake-app-%i/mongrel.pid" in unit
    assert "--log /var/log/amibake-app-%i/mongrel.log" in unit
    assert "RuntimeDirectory=amibake-app-%i\n" in unit and "LogsDirectory=amibake-app-%i\n" in unit
    profile = content["/etc/profile.d/amibake-ruby.sh"].content.decode()
    assert 'PATH=/opt/ree/bin:"$PATH"' in profile
    assert "rack:1.0.1" in manifest.components.ruby.gems  # actionpack 2.3.5: rack ~> 1.0.0
    assert "libpq-dev" in image_content(manifest).packages or \
        "libpq-dev" in manifest.image.packages  # the pg gem's headers
    build = content["/usr/lib/amibake/setup/ruby-build.sh"].content.decode()
    assert "PREFIX=/opt/ree" in build and "sha256sum --check" in build
    assert "MD5=4df7b09c01adfd711b0ab76837611542" in build and "md5sum --check" in build
    hba = content["/etc/amibake/postgresql/pg_hba.conf"].content.decode()
    assert "host  payroll_prod  payroll  127.0.0.1/32  md5" in hba
    # The maintenance page is the switch itself: it must not be baked in.
    assert "/srv/app/public/system/maintenance.html" not in content
    assert "if (-f /srv/app/public/system/maintenance.html)" in nginx


def test_nginx_config_has_the_seed_behaviour() -> None:
    manifest = load("smallpayroll.yaml")
    conf = {f.path: f for f in image_content(manifest).files}["/etc/nginx/nginx.conf"]
    text = conf.content.decode()
    for expected in (
        "least_conn;",
        "gzip_static on;",
        "try_files $uri $uri/index.html $uri.html @app;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header Host $host;",
        "error_page 404 /404.html;",
        "error_page 500 502 504 /500.html;",
        "if (-f /var/www/maintenance/on) {",
        "add_header Retry-After 300 always;",
        "client_max_body_size 20m;",
        "server_name payroll.example.com;",
    ):
        assert expected in text, expected


def test_gzip_above_16_kib_is_reproducible_and_lossless() -> None:
    rendered = render_role(rack(), "all-in-one")
    assert len(rendered.raw) > GZIP_THRESHOLD
    assert rendered.gzipped
    assert rendered.user_data[4:8] == b"\0\0\0\0"  # mtime 0
    assert gzip.decompress(rendered.user_data) == rendered.raw
    assert len(rendered.user_data) <= USER_DATA_LIMIT


def test_kept_gzip_is_level_9_and_a_damaged_one_is_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compress() keeps its result between runs; what it returns is always gzip -9
    of the input, whatever the cache directory holds."""
    from builder.render import assemble

    monkeypatch.setenv("AMIBAKE_CACHE_DIR", str(tmp_path))
    assemble._gzip_memo.cache_clear()
    raw = render_role(rack(), "all-in-one").raw
    expected = gzip.compress(raw, compresslevel=9, mtime=0)
    try:
        assert assemble.compress(raw) == expected
        (kept,) = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert kept.read_bytes() == expected
        assert assemble.compress(raw) == expected  # from the kept file
        kept.write_bytes(gzip.compress(b"something else", mtime=0))
        assert assemble.compress(raw) == expected
        kept.write_bytes(b"\x1f\x8b not gzip")
        assert assemble.compress(raw) == expected
    finally:
        assemble._gzip_memo.cache_clear()


def test_small_user_data_is_not_gzipped() -> None:
    rendered = render_role(load("smallpayroll.yaml"), "db", baked=True)
    assert rendered.user_data == rendered.raw
    assert len(rendered.raw) < GZIP_THRESHOLD


def test_more_than_one_part_is_multipart_mime_that_cloud_init_reads() -> None:
    from builder.validate.schema import bookworm_python

    script = Part("text/x-shellscript", "hello.sh", b"#!/bin/sh\necho hello\n")
    rendered = render_role(load("smallpayroll.yaml"), "web", baked=True, extra_parts=(script,))
    assert rendered.raw.startswith(b'Content-Type: multipart/mixed; boundary="==amibake-')
    assert mime_boundary(rendered.parts).encode() in rendered.raw
    again = render_role(load("smallpayroll.yaml"), "web", baked=True, extra_parts=(script,))
    assert again.user_data == rendered.user_data
    parts = split_user_data(rendered.user_data)
    assert [p.content_type for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert parts[1].content == script.content
    assert parts[0].content == rendered.parts[0].content
    # cloud-init's own user-data processor sees the same two parts.
    with bookworm_python():
        from cloudinit.user_data import UserDataProcessor

        processed = UserDataProcessor({}).process(rendered.user_data)
    seen = [
        (p.get_content_type(), p.get_payload(decode=True))
        for p in processed.walk() if not p.is_multipart()
    ]
    assert seen == [("text/cloud-config", parts[0].content),
                    ("text/x-shellscript", script.content)]


def test_gzipped_multipart_is_read_by_cloud_init() -> None:
    from builder.validate.schema import bookworm_python

    script = Part("text/x-shellscript", "boot.sh", b"#!/bin/sh\n" + b"echo x\n" * 4000)
    rendered = render_role(rack(), "db", extra_parts=(script,))
    assert rendered.gzipped
    with bookworm_python():
        from cloudinit.user_data import UserDataProcessor

        processed = UserDataProcessor({}).process(rendered.user_data)
    types = [p.get_content_type() for p in processed.walk() if not p.is_multipart()]
    assert types == ["text/cloud-config", "text/x-shellscript"]


def test_templates_use_strict_undefined() -> None:
    with pytest.raises(UserError, match="'upstream_var' is undefined"):
        render_template("nginx/upstream-servers.conf.j2", ports=(1,))


def test_unknown_component_points_at_the_manifest_line() -> None:
    import dataclasses

    manifest = load("smallpayroll.yaml")
    source = (ROOT / "manifests" / "smallpayroll.yaml").read_text().splitlines()

    bad_role = dataclasses.replace(manifest.roles["web"], components=("nginx", "app"))
    bad = dataclasses.replace(manifest, roles={**manifest.roles, "web": bad_role})
    with pytest.raises(UserError) as info:
        render_role(bad, "web")
    (problem,) = info.value.problems
    assert problem.location == manifest.where("roles.web.components")
    assert source[problem.location.line - 1].strip().startswith("components: [nginx]")
    assert "unknown component 'app'" in problem.message


def test_conflicting_files_are_refused() -> None:
    from builder.render.fragment import Fragment
    from builder.render.role import _merge_files

    a = Fragment("a", files=(File("/etc/x", b"1"),))
    b = Fragment("b", files=(File("/etc/x", b"2"),))
    with pytest.raises(UserError, match="rendered differently by a and b"):
        _merge_files([a, b])
    assert _merge_files([a, a]) == (File("/etc/x", b"1"),)


def test_multipart_parts_survive_email_parsing_byte_for_byte() -> None:
    parts = (
        Part("text/cloud-config", "a.yaml", b"#cloud-config\nlocale: C.UTF-8\n"),
        Part("text/x-shellscript", "b.sh", "#!/bin/sh\necho h\u00e9\n".encode()),
    )
    from builder.render.assemble import assemble

    doc = email.message_from_bytes(assemble(parts))
    payloads = [p.get_payload(decode=True) for p in doc.walk() if not p.is_multipart()]
    assert payloads == [p.content for p in parts]


def test_html_templates_are_escaped_and_config_templates_are_not() -> None:
    from builder.render.templates import render_template

    page = render_template("maintenance.html.j2", app_name="<script>x</script>",
                           start="s", end="e", contact="a & b").decode()
    assert "<script>x" not in page and "&lt;script&gt;x" in page and "a &amp; b" in page
