"""Hostile manifest values, rendered and read back by the real parser of each target.

Each case is a seed manifest with one value replaced directly on the model
(dataclasses.replace: the loader's checks are bypassed on purpose, so the
renderers' own quoting is what is tested). For every case the renderer either
refuses with a one-line UserError pointing at the manifest, or the real parser
of the file the value lands in reads exactly the value written:

- systemd units: `systemd --test --user` (systemd's own loader, run as an
  unprivileged user with the unit in a private unit path) dumps the parsed
  Environment=, WorkingDirectory=, Description= and ExecStart= argv;
- sysusers.d / tmpfiles.d: systemd-sysusers and systemd-tmpfiles with --root;
- nginx: `nginx -t`, then nginx serving the static root and the maintenance page;
- postgresql.conf / pg_hba.conf: a running PostgreSQL's pg_file_settings and
  pg_hba_file_rules views; psql for the `\\set` lines of the setup script;
- shell scripts: `bash -n`, then the scripts' assignments run by bash and
  printed back, with a canary file that an injected command would create;
- cloud-config: PyYAML's SafeLoader (what cloud-init uses) and cloud-init's schema.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import HbaRule, Manifest
from builder.ports import free_port
from builder.render import image_content, render_role, split_user_data
from builder.render.nginx import UPSTREAM_FILE
from builder.validate.schema import schema_problems
from tests.bake_fixture import rack_seed
from tests.cutover_fixtures import (  # noqa: F401  (pg_template is a fixture)
    PG_OS_USER,
    Cluster,
    destroy_cluster,
    pg_template,
    start_cluster,
)
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
#: the seed with the Rack sample: the app server unit and env script these cases read
SEED = rack_seed(load_manifest(ROOT / "manifests" / "smallpayroll.yaml"))
SEED_2010 = load_manifest(ROOT / "manifests" / "smallpayroll-2010.yaml")
CANARY = Path(tempfile.gettempdir()) / "amibake-hostile-canary"

#: One value per kind of trouble.
HOSTILE = {
    "dquote": 'say "hi"',
    "squote": "it's",
    "subst": f"$(touch {CANARY})",
    "backtick": f"`touch {CANARY}`",
    "dollar": "${HOME}x",
    "newline": "x\nExecStartPre=+/bin/sh -c 'touch /tmp/amibake-hostile-canary'",
    "cr": "x\ry",
    "tab": "x\ty",
    "percent": "50%i%%",
    "semicolon": "a; b",
    "braces": "{ location /etc { alias /etc/; } }",
    "hash": "#not-a-comment",
    "backslash": "back\\slash\\",
    "unicode": "ünïcødé—١٢٣",
    "nel": "x\x85y\u2028z",
    "long": "L" * 3000,
}


def changed(obj: Any, dotted: str, value: object) -> Any:
    """`obj` (a frozen dataclass) with the field at `dotted` replaced."""
    head, _, rest = dotted.partition(".")
    new = value if not rest else changed(getattr(obj, head), rest, value)
    return dataclasses.replace(obj, **{head: new})


#: render_files' results by manifest: several tests read the files of the same
#: case (app.database.name is read back by psql, pg_hba, bash and app-env.sh);
#: the checks run on the first render, a failed one is never kept
_RENDERED: dict[str, dict[str, bytes] | None] = {}


def render_files(manifest: Manifest, role: str = "all-in-one") -> dict[str, bytes] | None:
    """Every file of the role's components (the all-in-one role has them all, as
    its fried user-data carries them), or None when the renderer refuses: then
    with one line that points at the manifest."""
    key = f"{role}\0{manifest!r}"
    if key not in _RENDERED:
        _RENDERED[key] = _render_files(manifest, role)
    files = _RENDERED[key]
    return None if files is None else dict(files)


def _render_files(manifest: Manifest, role: str) -> dict[str, bytes] | None:
    try:
        rendered = render_role(manifest, role)
        files = {f.path: f.content for fr in rendered.fragments for f in fr.files}
    except UserError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
        assert str(exc).startswith(f"{manifest.source}:"), str(exc)
        return None
    _check_cloud_config(rendered.user_data, rendered.fragments)
    return files


def _check_cloud_config(user_data: bytes, fragments: Any) -> None:
    """cloud-init's loader reads exactly the keys and the file contents rendered."""
    part = split_user_data(user_data)[0]
    config = yaml.safe_load(part.content)
    assert set(config) == {"locale", "packages", "runcmd", "ssh_genkeytypes", "write_files"}
    wanted = {f.path: f.content for fragment in fragments for f in fragment.files}
    for entry in config["write_files"]:
        content = entry["content"]
        data = (base64.b64decode(content) if entry.get("encoding") == "b64"
                else content.encode())
        if entry["path"] in wanted:
            assert data == wanted[entry["path"]], entry["path"]
    assert schema_problems(part.content) == []


def cases(*fields: str) -> list[Any]:
    return [pytest.param(field, name, value, id=f"{field}-{name}")
            for field in fields for name, value in HOSTILE.items()]


@pytest.fixture(autouse=True)
def _no_canary() -> Iterator[None]:
    CANARY.unlink(missing_ok=True)
    yield
    assert not CANARY.exists(), "a hostile value ran a command"


# ------------------------------------------------------------------ systemd

def _private_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="amibake-hostile-"))
    path.chmod(0o755)
    return path


def systemd_dumps(units: dict[str, bytes], instances: list[str]
                  ) -> dict[str, dict[str, list[str]]]:
    """systemd's own reading of units: `systemd --test --user` as an unprivileged
    user, the units in a private unit path, all instances pulled in by one target
    (one run for many cases). Instance → setting name → values, in order; a
    line systemd ignored or rewrote (a complaint naming the unit) fails."""
    base = _private_dir()
    try:
        unit_dir, runtime = base / "units", base / "runtime"
        unit_dir.mkdir(mode=0o755)
        runtime.mkdir(mode=0o700)
        shutil.chown(runtime, PG_OS_USER, PG_OS_USER)
        target = "amibake-hostile.target"
        units = {**units, target: ("[Unit]\nWants=" + " ".join(instances) + "\n").encode()}
        for name, content in units.items():
            path = unit_dir / name
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(content)
            path.chmod(0o644)
        proc = subprocess.run(
            ["runuser", "-u", PG_OS_USER, "--", "env", f"XDG_RUNTIME_DIR={runtime}",
             f"SYSTEMD_UNIT_PATH={unit_dir}:", "/lib/systemd/systemd", "--test", "--user",
             f"--unit={target}", "--no-pager", "--log-target=console"],
            capture_output=True, text=True, timeout=300, check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    dumps = {}
    for instance in instances:
        template = instance.partition("@")[0] + "@"
        complaints = [line for line in proc.stderr.splitlines() if f"/{template}" in line]
        assert not complaints, complaints
        block = next(b for b in proc.stdout.split("-> Unit ") if b.startswith(instance + ":"))
        settings: dict[str, list[str]] = {}
        for line in block.splitlines():
            key, sep, value = line.strip().partition(": ")
            if sep:
                settings.setdefault(key, []).append(value)
        dumps[instance] = settings
    return dumps


APP_UNIT = "/etc/systemd/system/amibake-app@.service"
DROP_IN = "/etc/systemd/system/postgresql@.service.d/amibake-instance-store.conf"
APP_UNIT_CASES = cases("components.appserver.environment", "components.appserver.bind",
                       "app.root", "app.uploads_dir", "app.name")
DROP_IN_CASES = cases("components.postgresql.data_dir")


def _unit_case(field: str, value: str) -> Manifest:
    if field in ("app.root", "app.uploads_dir"):
        value = "/srv/" + value
    elif field.endswith("data_dir"):
        value = "/mnt/" + value
    return changed(SEED, field, value)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def unit_dumps() -> dict[tuple[str, str], tuple[Manifest, dict[str, list[str]] | None]]:
    """(field, case) → (manifest, systemd's reading of its unit, or None if refused)."""
    units: dict[str, bytes] = {}
    wanted: dict[tuple[str, str], tuple[Manifest, str | None]] = {}
    for index, param in enumerate(APP_UNIT_CASES + DROP_IN_CASES):
        field, name, value = param.values
        manifest = _unit_case(field, value)
        files = render_files(manifest)
        instance = None
        if files is not None and field.endswith("data_dir"):
            units[f"c{index}-pg@.service"] = b"[Service]\nExecStart=/bin/true\n"
            units[f"c{index}-pg@.service.d/amibake-instance-store.conf"] = files[DROP_IN]
            instance = f"c{index}-pg@15-main.service"
        elif files is not None:
            units[f"c{index}-app@.service"] = files[APP_UNIT]
            instance = f"c{index}-app@8000.service"
        wanted[(field, name)] = (manifest, instance)
    dumps = systemd_dumps(units, [i for _, i in wanted.values() if i])
    return {key: (m, dumps[i] if i else None) for key, (m, i) in wanted.items()}


@pytest.mark.parametrize(("field", "name", "value"), APP_UNIT_CASES)
def test_app_server_unit_reads_values_as_written(
        unit_dumps: Any, field: str, name: str, value: str) -> None:
    manifest, dump = unit_dumps[(field, name)]
    if dump is None:
        return  # refused with one line (render_files checked it)
    app, server = manifest.app, manifest.components.appserver
    assert dump["Description"] == [f"{app.name} app server (puma) on port 8000"]
    assert dump["WorkingDirectory"] == [app.root]
    assert dump["Environment"] == [
        f"RACK_ENV={server.environment}", f"RAILS_ENV={server.environment}", "PORT=8000",
        f"UPLOADS_DIR={app.uploads_dir}", f"APP_NAME={app.name}"]
    # `$$` becomes `$` when systemd runs the command
    argv = [a.replace("$$", "$") for a in _dumped_argv(dump["Command Line"][0])]
    assert argv == ["/usr/bin/puma", "--environment", server.environment,
                    "--bind", f"tcp://{server.bind}:8000", "--threads", "4:4",
                    f"{app.root}/config.ru"]


def _dumped_argv(line: str) -> list[str]:
    """The argv of systemd's dumped `Command Line:`: words split on spaces, a word
    with special characters in double quotes with `\\`, `"`, `$` and backtick
    escaped by a backslash (systemd's shell_maybe_quote)."""
    words = []
    for quoted, bare in re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', line):
        words.append(re.sub(r"\\(.)", r"\1", quoted) if quoted else bare)
    return words


@pytest.mark.parametrize(("field", "name", "value"), DROP_IN_CASES)
def test_instance_store_drop_in_reads_the_data_dir(
        unit_dumps: Any, field: str, name: str, value: str) -> None:
    manifest, dump = unit_dumps[(field, name)]
    if dump is None:
        return
    # systemd adds where the dependency came from
    assert dump["RequiresMountsFor"] == [manifest.components.postgresql.data_dir
                                         + " (origin-file)"]


@pytest.mark.parametrize(("field", "name", "value"), cases("app.root", "app.name"))
def test_sysusers_and_tmpfiles_read_values_as_written(
        field: str, name: str, value: str, tmp_path: Path) -> None:
    if field == "app.root":
        value = "/srv/" + value
    manifest = changed(changed(SEED, field, value), "app.uploads_dir",
                       "/var/" + HOSTILE["dquote"] + value[-20:])
    files = render_files(manifest)
    if files is None:
        return
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name_ in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name_).write_text("")
    (tmp_path / "sysusers.conf").write_bytes(files["/usr/lib/sysusers.d/amibake-app.conf"])
    (tmp_path / "tmpfiles.conf").write_bytes(files["/usr/lib/tmpfiles.d/amibake-app.conf"])
    sysusers = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(tmp_path / "sysusers.conf")],
        capture_output=True, text=True, check=False)
    assert sysusers.returncode == 0, sysusers.stderr
    entry = (root / "etc/passwd").read_text().strip().split(":")
    assert entry[0] == manifest.app.user
    assert entry[4] == f"{manifest.app.name} app" and entry[5] == manifest.app.root
    tmpfiles = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}",
         str(tmp_path / "tmpfiles.conf")],
        capture_output=True, text=True, check=False)
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    assert (root / manifest.app.uploads_dir.lstrip("/")).is_dir()


# -------------------------------------------------------------------- nginx

def _nginx_root(files: dict[str, bytes], root: Path, listen: int) -> Path:
    conf = files["/etc/nginx/nginx.conf"].decode()
    for prefix in ("/etc/nginx/amibake", "/srv", "/var/www", "/var/log/nginx", "/run/nginx.pid",
                   "/var/m"):
        conf = conf.replace(prefix, f"{root}{prefix}")
    conf = re.sub(r"listen \d+ default_server;", f"listen 127.0.0.1:{listen} default_server;",
                  conf)
    conf = conf.replace("user www-data;", "user root;")
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules").symlink_to("/usr/lib/nginx/modules")
    for d in ("var/log/nginx", "run", "etc/nginx/amibake"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / UPSTREAM_FILE.lstrip("/")).write_text(f"server 127.0.0.1:{free_port()};\n")
    path = root / "etc/nginx/nginx.conf"
    path.write_text(conf)
    return path


def _nginx_t(conf: Path, root: Path) -> None:
    proc = subprocess.run(["nginx", "-t", "-p", str(root), "-c", str(conf), "-e",
                           str(root / "error.log")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "components.nginx.static_root", "components.nginx.maintenance_page",
    "components.nginx.maintenance_flag", "components.nginx.error_pages",
    "app.server_name", "components.nginx.client_max_body_size"))
def test_nginx_reads_values_as_written(field: str, name: str, value: str, tmp_path: Path
                                       ) -> None:
    new: object = value
    if field == "components.nginx.error_pages":
        new = {"404": "/" + value, "500": "/500.html"}
    elif field != "app.server_name" and not field.endswith("client_max_body_size"):
        new = "/var/m/" + value
    manifest = changed(SEED, field, new)
    files = render_files(manifest)
    if files is None:
        return
    nginx = manifest.components.nginx
    root = tmp_path / "root"
    listen = free_port()
    conf = _nginx_root(files, root, listen)
    _nginx_t(conf, root)
    static = root / nginx.static_root.lstrip("/")
    static.mkdir(parents=True, exist_ok=True)
    (static / "hello.txt").write_text("hello from the static root\n")
    (static / "404.html").write_text("not found page\n")
    page = root / nginx.maintenance_page.lstrip("/")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("maintenance page\n")
    with serving(["nginx", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log"),
                  "-g", "daemon off;"], listen, tmp_path / "nginx.log"):
        assert _get(listen, "/hello.txt") == (200, b"hello from the static root\n")
        status, body = _get(listen, "/etc/passwd")  # a missing file: to the (absent) app
        assert status in (404, 502) and b"root:" not in body
        flag = root / nginx.maintenance_flag.lstrip("/")
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.write_text("")
        assert _get(listen, "/hello.txt") == (503, b"maintenance page\n")


# --------------------------------------------------------------- PostgreSQL

@pytest.fixture(scope="module")
def cluster(pg_template: Path) -> Iterator[Cluster]:  # noqa: F811
    """One running PostgreSQL; its views parse amibake.conf and pg_hba.conf afresh
    on every query, so each case only rewrites the two files."""
    c = start_cluster(pg_template, "hostile",
                      ("include_if_exists = 'amibake.conf'",))
    try:
        yield c
    finally:
        destroy_cluster(c)


def _write_owned(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    shutil.chown(path, PG_OS_USER, PG_OS_USER)


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "components.postgresql.settings", "components.postgresql.settings.key",
    "components.postgresql.listen_addresses"))
def test_postgresql_conf_reads_values_as_written(
        cluster: Cluster, field: str, name: str, value: str) -> None:
    if field.endswith("settings"):
        manifest = changed(SEED, field, {"shared_buffers": "128MB", "application_name": value})
    elif field.endswith(".key"):
        manifest = changed(SEED, "components.postgresql.settings", {value: "on"})
    else:
        manifest = changed(SEED, field, value)
    files = render_files(manifest)
    if files is None:
        return
    pg = manifest.components.postgresql
    _write_owned(cluster.data / "amibake.conf", files["/etc/amibake/postgresql/amibake.conf"])
    rows = cluster.sql("SELECT name, setting FROM pg_file_settings WHERE sourcefile = %s "
                       "ORDER BY seqno", (str(cluster.data / "amibake.conf"),), dbname="postgres")
    assert rows == [("listen_addresses", pg.listen_addresses), ("port", str(pg.port)),
                    *sorted(pg.settings.items())]


HBA_QUERY = ("SELECT type, database, user_name, address, auth_method, error "
             "FROM pg_hba_file_rules ORDER BY line_number")


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "hba.database", "hba.user", "app.database.name", "app.database.user"))
def test_pg_hba_reads_names_as_written(cluster: Cluster, field: str, name: str, value: str
                                       ) -> None:
    if field.startswith("hba."):
        rule = HbaRule(type="host", database="payroll_prod", user="payroll",
                       address="10.1.0.0/16")
        rule = changed(rule, field.removeprefix("hba."), value)
        manifest = changed(SEED, "components.postgresql.hba", (rule,))
        want = (rule.database, rule.user)
    else:
        manifest = changed(SEED, field, value)
        db = manifest.app.database
        want = (db.name, db.user)
    files = render_files(manifest)
    if files is None:
        return
    hba = cluster.data / "pg_hba.conf"
    saved = hba.read_bytes()
    try:
        _write_owned(hba, files["/etc/amibake/postgresql/pg_hba.conf"])
        rows = cluster.sql(HBA_QUERY, dbname="postgres")
    finally:
        _write_owned(hba, saved)
    assert all(r[-1] is None for r in rows), rows
    ours = [(r[1], r[2]) for r in rows if r[3] in ("10.1.0.0", "10.0.0.0")]
    assert ([want[0]], [want[1]]) in ours, rows


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "app.database.name", "app.database.user"))
def test_psql_reads_the_setup_scripts_names_as_written(
        cluster: Cluster, field: str, name: str, value: str) -> None:
    manifest = changed(SEED, field, value)
    script = rendered_script(manifest, "/usr/lib/amibake/setup/postgresql.sh")
    if script is None:
        return
    sets = [line for line in script.splitlines() if line.startswith("\\set db_")]
    assert len(sets) == 2
    proc = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", cluster.dsn(dbname="postgres")],
        input="\n".join(sets) + "\nSELECT :'db_user';\nSELECT :'db_name';\n",
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    db = manifest.app.database
    assert proc.stdout == f"{db.user}\n{db.name}\n"


# -------------------------------------------------------------------- shell

def rendered_script(manifest: Manifest, path: str) -> str | None:
    """The setup script at `path` as rendered (None when refused), `bash -n` clean."""
    files = render_files(manifest)
    if files is None:
        return None
    script = files[path].decode()
    _bash_n(script)
    return script


def _bash_n(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _bash_values(script: str, names: list[str]) -> list[str]:
    """Run the script's head (everything before its first function) with bash and
    print the named variables (`X` or `X[@]`), NUL-separated."""
    head = script[:script.index("\nlog() {")]
    prints = " ".join(f'"${{{n}}}"' for n in names)
    proc = subprocess.run(["bash", "-c", head + f"\nprintf '%s\\0' {prints}\n"],
                          capture_output=True, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "components.ruby.tarball.version", "components.ruby.tarball.url",
    "components.ruby.tarball.prefix", "components.ruby.tarball.configure_flags",
    "components.ruby.gems"))
def test_ruby_build_script_reads_values_as_written(field: str, name: str, value: str) -> None:
    new: object = value
    if field.endswith("prefix"):
        new = "/opt/" + value
    elif field.endswith(("configure_flags", "gems")):
        new = (value, "--plain")
    manifest = changed(SEED_2010, field, new)
    script = rendered_script(manifest, "/usr/lib/amibake/setup/ruby-build.sh")
    if script is None:
        return
    ruby = manifest.components.ruby
    tarball = ruby.tarball
    values = _bash_values(script, ["URL", "PREFIX", "GEMS[@]", "CONFIGURE_FLAGS[@]"])
    assert values == [tarball.url, tarball.prefix.rstrip("/"), *ruby.gems,
                      *tarball.configure_flags]


@pytest.mark.parametrize(("field", "name", "value"), cases(
    "components.postgresql.instance_store", "components.postgresql.data_dir",
    "app.database.name", "app.database.user", "components.postgresql.version"))
def test_postgresql_setup_script_reads_values_as_written(field: str, name: str, value: str
                                                          ) -> None:
    manifest = changed(SEED, field, "/mnt/" + value if field.endswith("data_dir") else value)
    script = rendered_script(manifest, "/usr/lib/amibake/setup/postgresql.sh")
    if script is None:
        return
    pg, db = manifest.components.postgresql, manifest.app.database
    values = _bash_values(script, ["STORE", "DATA", "VERSION", "DB_USER", "DB_NAME", "MOUNT"])
    assert values == [pg.instance_store, os.path.normpath(pg.data_dir), pg.version, db.user,
                      db.name, pg.mount_point]


@pytest.mark.parametrize(("field", "name", "value"), cases("components.nginx.upstream_role"))
def test_nginx_setup_script_stays_one_script(field: str, name: str, value: str) -> None:
    manifest = changed(SEED, field, value)
    script = rendered_script(manifest, "/usr/lib/amibake/setup/nginx.sh")
    if script is None:
        return
    seed = {f.path: f.content for f in image_content(SEED).files}
    assert len(script.splitlines()) == len(
        seed["/usr/lib/amibake/setup/nginx.sh"].decode().splitlines())
    assert "\r" not in script


# --------------------------------------------------------------- user-data

def test_manifest_file_name_cannot_add_cloud_config_keys() -> None:
    evil = Path("/tmp/x\nbootcmd: [[touch, /tmp/amibake-hostile-canary]]\n#\r\u2028.yaml")
    manifest = dataclasses.replace(SEED, source=evil)
    rendered = render_role(manifest, "all-in-one")
    _check_cloud_config(rendered.user_data, rendered.fragments)
    header = rendered.cloud_config.split("\nlocale:")[0].splitlines()
    assert all(line.startswith("#") for line in header), header
    assert header[-1].endswith("rendered by amibake from amibake-hostile-canary______.yaml")
    for file in image_content(manifest).files:
        if file.path.startswith("/usr/lib/amibake/amibake-"):
            continue
        assert b"bootcmd" not in file.content, file.path


def test_role_names_and_markers_stay_on_their_line() -> None:
    roles = dict(SEED.roles)
    roles["web\nbootcmd: [x]"] = roles["web"]
    with pytest.raises(UserError, match="cannot be written to user-data"):
        render_role(dataclasses.replace(SEED, roles=roles), "web\nbootcmd: [x]")
    for marker in ("a\rb", "a\x85b", "a\u2028b"):
        with pytest.raises(UserError, match="bad user-data marker"):
            render_role(SEED, "web", markers={"secrets-endpoint": marker})


def test_control_characters_in_files_go_base64() -> None:
    manifest = changed(SEED, "components.postgresql.instance_store", "eph\x85\u2028emeral0")
    rendered = render_role(manifest, "db")
    config = yaml.safe_load(split_user_data(rendered.user_data)[0].content)
    entries = {e["path"]: e for e in config["write_files"]}
    assert all("\x85" not in e["content"] for e in entries.values())
    assert entries["/usr/lib/amibake/setup/postgresql.sh"]["encoding"] == "b64"
    _check_cloud_config(rendered.user_data, rendered.fragments)


def test_a_refusal_names_the_section_and_the_target() -> None:
    manifest = changed(SEED, "components.nginx.static_root", "/srv/$document_root")
    with pytest.raises(UserError) as info:
        image_content(manifest)
    message = str(info.value)
    assert message.startswith(f"{SEED.source}:") and "nginx" in message and "$" in message
    assert "\n" not in message


def test_every_hostile_value_is_a_file_or_a_refusal() -> None:
    """Sanity of the corpus: some values render, some are refused, for each format."""
    rendered = refused = 0
    for value in HOSTILE.values():
        files = render_files(changed(SEED, "components.appserver.environment", value))
        rendered, refused = rendered + (files is not None), refused + (files is None)
    assert rendered >= 8 and refused >= 3



@pytest.mark.parametrize(("field", "name", "value"), cases(
    "app.database.name", "app.database.user"))
def test_app_env_script_writes_the_names_as_written(
        field: str, name: str, value: str, tmp_path: Path) -> None:
    """app-env.sh's Python (a quoted heredoc) builds DATABASE_URL from the names."""
    from urllib.parse import unquote, urlsplit

    manifest = changed(SEED, field, value)
    script = rendered_script(manifest, "/usr/lib/amibake/setup/app-env.sh")
    if script is None:
        return
    secret = tmp_path / "secret"
    secret.write_text("#!/bin/sh\nprintf 's3cret'\n")
    secret.chmod(0o755)
    env_file = tmp_path / "app.env"
    proc = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, check=False,
        # /usr/bin first: Debian's python3 runs the heredoc, as on the instance
        # (not a version manager's shim, which costs ~0.1 s a run)
        env={"PATH": f"/usr/bin:{os.environ['PATH']}", "AMIBAKE_HOSTS_ENV": str(tmp_path / "none"),
             "AMIBAKE_APP_ENV": str(env_file), "AMIBAKE_SECRET_TOOL": str(secret)})
    assert proc.returncode == 0, proc.stderr
    url = urlsplit(env_file.read_text().removeprefix("DATABASE_URL=").rstrip("\n"))
    db = manifest.app.database
    assert (unquote(url.username or ""), unquote(url.path[1:])) == (db.user, db.name)
