"""The rendered boot scripts and the sample app, run for real.

shellcheck on every setup script; nginx.sh and app-env.sh with their test
overrides; the sysusers/tmpfiles configs applied to a temporary root; the
PostgreSQL step that creates the app's role and database, against a real
throw-away cluster configured with the rendered pg_hba.conf and settings;
then the sample Rack app under Debian's puma against that database.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.ports import free_port
from builder.proc import run
from builder.render import File, image_content
from builder.render.app import own_app
from tests.bake_fixture import rack_seed
from tests.servers import serving

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: A password with every character shell, SQL, psql and URLs treat specially.
TRICKY = "pa'ss\\w$rd`x\"; @:/%?#&= ö"


def files_of(manifest_path: Path, *, rack: bool = True) -> dict[str, File]:
    """The image's files; with `rack`, an own app's manifest (the seed's Rails
    sample) in its Rack form: the sample app and the env script with only the
    database secret, which these tests run (the Rails pieces: test_rails_render)."""
    manifest = load_manifest(manifest_path)
    if rack and own_app(manifest):
        manifest = rack_seed(manifest)
    return {f.path: f for f in image_content(manifest).files}


def write_script(directory: Path, file: File) -> Path:
    path = directory / file.path.rpartition("/")[2]
    path.write_bytes(file.content)
    path.chmod(0o755)
    return path


def fake_secret_tool(directory: Path, value: str) -> Path:
    """Stands in for H3's amibake-secret: prints the secret for `db_password`."""
    (directory / "secret.value").write_text(value)
    tool = directory / "amibake-secret"
    tool.write_text(
        "#!/bin/sh\n"
        '[ "$1" = db_password ] || { echo "unknown secret $1" >&2; exit 1; }\n'
        f'cat "{directory}/secret.value"\n'
    )
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_setup_scripts_pass_shellcheck(manifest_path: Path, tmp_path: Path) -> None:
    scripts = [
        write_script(tmp_path, f) for p, f in files_of(manifest_path, rack=False).items()
        if p.startswith("/usr/lib/amibake/setup/")
    ]
    assert len(scripts) >= 4
    result = subprocess.run(
        ["shellcheck", "--severity=style", "--exclude=SC1090", *map(str, scripts)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nrm -rf $1/*\n")
    assert subprocess.run(["shellcheck", str(bad)], capture_output=True).returncode != 0


def test_nginx_setup_writes_the_upstream_from_hosts_env(tmp_path: Path) -> None:
    script = write_script(tmp_path, files_of(MANIFESTS[-1])["/usr/lib/amibake/setup/nginx.sh"])
    upstream = tmp_path / "upstream-servers.conf"
    hosts = tmp_path / "hosts.env"
    calls = tmp_path / "systemctl.calls"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >>{calls}\n')
    systemctl.chmod(0o755)
    env = {"AMIBAKE_HOSTS_ENV": str(hosts), "AMIBAKE_UPSTREAM_FILE": str(upstream),
           "AMIBAKE_SYSTEMCTL": str(systemctl)}
    run([script], env=env)  # no hosts.env: this host
    assert [ln for ln in upstream.read_text().splitlines() if not ln.startswith("#")] == [
        "server 127.0.0.1:8000;", "server 127.0.0.1:8001;", "server 127.0.0.1:8002;",
    ]
    hosts.write_text('AMIBAKE_HOSTS_APP="10.0.1.5 10.0.1.6"\n')
    run([script], env=env)
    servers = [ln for ln in upstream.read_text().splitlines() if not ln.startswith("#")]
    assert servers == [f"server 10.0.1.{h}:{p};" for h in (5, 6) for p in (8000, 8001, 8002)]
    assert stat.S_IMODE(upstream.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hosts.env", "nginx.sh", "systemctl", "systemctl.calls",
        "upstream-servers.conf"]  # no temp file left
    # nginx picks the config up if it is already running (a fried boot).
    assert calls.read_text() == "try-reload-or-restart nginx.service\n" * 2


def test_app_env_builds_database_url_from_the_secret(tmp_path: Path) -> None:
    script = write_script(tmp_path, files_of(MANIFESTS[-1])["/usr/lib/amibake/setup/app-env.sh"])
    env_file = tmp_path / "app.env"
    hosts = tmp_path / "hosts.env"
    hosts.write_text('AMIBAKE_HOSTS_DB="10.0.2.7 10.0.2.8"\n')
    env = {
        "AMIBAKE_HOSTS_ENV": str(hosts),
        "AMIBAKE_APP_ENV": str(env_file),
        "AMIBAKE_SECRET_TOOL": str(fake_secret_tool(tmp_path, TRICKY)),
    }
    run([script], env=env)
    from urllib.parse import quote, unquote, urlsplit

    line = env_file.read_text()
    assert line == (
        f"DATABASE_URL=postgres://payroll:{quote(TRICKY, safe='')}@10.0.2.7:5432/payroll_prod\n"
    )
    assert unquote(urlsplit(line.split("=", 1)[1].strip()).password or "") == TRICKY
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # An empty secret is a loud failure, and the old file stays.
    (tmp_path / "secret.value").write_text("")
    result = subprocess.run([str(script)], env={**os.environ, **env}, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "empty" in result.stderr
    assert env_file.read_text() == line


def test_sysusers_and_tmpfiles_create_the_app_user_and_uploads(tmp_path: Path) -> None:
    files = files_of(MANIFESTS[-1])
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = tmp_path / "sysusers.conf"
    sysusers.write_bytes(files["/usr/lib/sysusers.d/amibake-app.conf"].content)
    tmpfiles = tmp_path / "tmpfiles.conf"
    tmpfiles.write_bytes(files["/usr/lib/tmpfiles.d/amibake-app.conf"].content)
    run(["systemd-sysusers", f"--root={root}", sysusers])
    entry = next(ln for ln in (root / "etc/passwd").read_text().splitlines()
                 if ln.startswith("app:"))
    uid = int(entry.split(":")[2])
    assert entry.endswith(":/srv/app:/usr/sbin/nologin")
    run(["systemd-tmpfiles", f"--root={root}", "--create", tmpfiles])
    uploads = root / "var/uploads"
    assert uploads.is_dir()
    assert stat.S_IMODE(uploads.stat().st_mode) == 0o750
    assert uploads.stat().st_uid == uid


# ------------------------------------------------ the instance store (/mnt)


@contextmanager
def loop_device(tmp_path: Path, size: int = 64 << 20) -> Iterator[str]:
    """A blank block device (a loop device on a sparse file), always detached."""
    backing = tmp_path / "ephemeral0.img"
    with backing.open("wb") as f:
        f.truncate(size)
    device = run(["losetup", "--find", "--show", backing], capture=True).stdout.strip()
    try:
        yield device
    finally:
        run(["losetup", "-d", device], check=False)


def mount_store(tmp_path: Path, imds_url: str, mount: Path) -> subprocess.CompletedProcess[str]:
    script = write_script(tmp_path, files_of(MANIFESTS[-1])["/usr/lib/amibake/setup/postgresql.sh"])
    return subprocess.run([str(script)], capture_output=True, text=True, timeout=120, env={
        **os.environ,
        "AMIBAKE_PG_STEPS": "mount_store",
        "AMIBAKE_IMDS_URL": imds_url,
        "AMIBAKE_IMDS_TIMEOUT": "10",
        "AMIBAKE_DISPATCH": str(ROOT / "cloudinit/boot/amibake-dispatch"),
        "AMIBAKE_PG_MOUNT": str(mount),
        "AMIBAKE_FSTAB": str(tmp_path / "fstab"),
    })


def test_postgresql_mounts_the_instance_store_from_imds(tmp_path: Path) -> None:
    from builder.imds import ImdsConfig, ImdsServer

    mount = tmp_path / "mnt"
    (tmp_path / "fstab").write_text("# fstab\n")
    with loop_device(tmp_path) as device:
        bdm = {"ami": "/dev/xvda", "root": "/dev/xvda", "ephemeral0": device.removeprefix("/dev/")}
        try:
            with ImdsServer(ImdsConfig(block_device_mapping=bdm)) as imds:
                first = mount_store(tmp_path, imds.url, mount)
                assert first.returncode == 0, first.stderr
                assert f"making an ext4 filesystem on blank {device}" in first.stderr
                assert run(["findmnt", "-n", "-o", "SOURCE", mount], capture=True).stdout.strip() \
                    == device
                assert run(["blkid", "-s", "LABEL", "-o", "value", device],
                           capture=True).stdout.strip() == "ephemeral0"
                uuid_ = run(["blkid", "-s", "UUID", "-o", "value", device], capture=True).stdout
                assert (f"UUID={uuid_.strip()} {mount} auto defaults,nofail,"
                        "x-systemd.device-timeout=10s 0 2") in (tmp_path / "fstab").read_text()
                (mount / "kept").write_text("data")
                again = mount_store(tmp_path, imds.url, mount)  # idempotent
                assert again.returncode == 0 and "already mounted" in again.stderr
                run(["umount", mount])
                # A reboot: the filesystem is mounted again, never re-made.
                third = mount_store(tmp_path, imds.url, mount)
                assert third.returncode == 0, third.stderr
                assert "making an ext4" not in third.stderr
                assert (mount / "kept").read_text() == "data"
                assert (tmp_path / "fstab").read_text().count("UUID=") == 1
        finally:
            run(["umount", mount], check=False)


def test_postgresql_keeps_cloud_inits_entry_for_the_mount_point(tmp_path: Path) -> None:
    """cloud-init's mounts module lists ephemeral0 at /mnt by default on EC2: the
    setup script mounts the store but writes no second fstab line for /mnt."""
    from builder.imds import ImdsConfig, ImdsServer

    mount = tmp_path / "mnt"
    theirs = f"/dev/vdb\t{mount}\tauto\tdefaults,nofail,comment=cloudconfig\t0\t2\n"
    (tmp_path / "fstab").write_text(theirs)
    with loop_device(tmp_path) as device:
        bdm = {"ami": "/dev/xvda", "root": "/dev/xvda", "ephemeral0": device.removeprefix("/dev/")}
        try:
            with ImdsServer(ImdsConfig(block_device_mapping=bdm)) as imds:
                result = mount_store(tmp_path, imds.url, mount)
            assert result.returncode == 0, result.stderr
            assert run(["findmnt", "-n", "-o", "SOURCE", mount], capture=True).stdout.strip() \
                == device
            assert (tmp_path / "fstab").read_text() == theirs
        finally:
            run(["umount", mount], check=False)


def test_postgresql_refuses_a_missing_instance_store(tmp_path: Path) -> None:
    from builder.imds import ImdsConfig, ImdsServer

    (tmp_path / "fstab").write_text("")
    bdm = {"ami": "/dev/xvda", "root": "/dev/xvda", "ephemeral0": "sdzz"}
    with ImdsServer(ImdsConfig(block_device_mapping=bdm)) as imds:
        result = mount_store(tmp_path, imds.url, tmp_path / "mnt")
    assert result.returncode == 1
    assert "instance store ephemeral0 not found" in result.stderr
    assert (tmp_path / "fstab").read_text() == ""


def test_app_env_with_the_real_secret_resolver_and_imds(tmp_path: Path) -> None:
    """H3's amibake-secret, as baked, reads the secret named in the rendered roles.json
    from the metadata emulator's secrets endpoint (named by a user-data marker)."""
    from builder.imds import ImdsConfig, ImdsServer
    from builder.render import render_role

    manifest = rack_seed(load_manifest(MANIFESTS[-1]))
    root = tmp_path / "root"
    for path, file in files_of(MANIFESTS[-1]).items():
        if path.startswith(("/etc/amibake/", "/usr/lib/amibake/")):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
            target.chmod(file.mode)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    user_data = render_role(manifest, "app", baked=True,
                            markers={"secrets-endpoint": url}).user_data
    config = ImdsConfig(user_data=user_data, secrets={"/smallpayroll/db-password": TRICKY})
    with ImdsServer(config, port=port):
        run([root / "usr/lib/amibake/setup/app-env.sh"], env={
            "AMIBAKE_ROOT": str(root),
            "AMIBAKE_IMDS_URL": url,
            "AMIBAKE_SECRET_TOOL": str(root / "usr/lib/amibake/amibake-secret"),
            "AMIBAKE_HOSTS_ENV": str(tmp_path / "hosts.env"),
            "AMIBAKE_APP_ENV": str(tmp_path / "app.env"),
        })
    from urllib.parse import quote

    assert (tmp_path / "app.env").read_text() == (
        f"DATABASE_URL=postgres://payroll:{quote(TRICKY, safe='')}@127.0.0.1:5432/payroll_prod\n"
    )


# ------------------------------------------------------- PostgreSQL + the app


class Cluster:
    """A throw-away PostgreSQL 15 cluster owned by `postgres`, with the rendered configs."""

    def __init__(self, files: dict[str, File]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="amibake-render-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o755)
        run([PG_BIN / "initdb", "-D", self.data, "--auth-local=peer",
             "--auth-host=scram-sha-256", "-U", "postgres"], user="postgres", group="postgres",
            capture=True)
        (self.data / "pg_hba.conf").write_bytes(
            files["/etc/amibake/postgresql/pg_hba.conf"].content)
        (self.data / "amibake.conf").write_bytes(
            files["/etc/amibake/postgresql/amibake.conf"].content)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "include 'amibake.conf'\n"
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\n"
            )
        run([PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "start"],
            user="postgres", group="postgres", capture=True)

    def stop(self) -> None:
        run([PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
            user="postgres", group="postgres", capture=True, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, *, user: str = "postgres", password: str | None = None) -> str:
        cmd = [PG_BIN / "psql", "-X", "-At", "-p", str(self.port), "-d", "postgres", "-c", sql]
        if password is None:
            return run([*cmd, "-h", self.dir], user="postgres", group="postgres",
                       capture=True).stdout.strip()
        return run([*cmd, "-h", "127.0.0.1", "-U", user], capture=True,
                   env={"PGPASSWORD": password}).stdout.strip()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(files_of(MANIFESTS[-1]))
    try:
        yield c
    finally:
        c.remove()


def create_database(cluster: Cluster, tmp_path: Path, password: str) -> None:
    script = write_script(tmp_path, files_of(MANIFESTS[-1])["/usr/lib/amibake/setup/postgresql.sh"])
    run([script], env={
        "AMIBAKE_PG_STEPS": "create_database",
        "AMIBAKE_PG_PORT": str(cluster.port),
        "AMIBAKE_PSQL_HOST": str(cluster.dir),
        "AMIBAKE_SECRET_TOOL": str(fake_secret_tool(tmp_path, password)),
    })


def test_rendered_pg_configs_are_accepted_by_postgresql(cluster: Cluster) -> None:
    assert cluster.psql("SHOW shared_buffers") == "128MB"
    assert cluster.psql("SHOW log_min_duration_statement") == "500ms"
    rules = cluster.psql(
        "SELECT type, database[1], user_name[1], address, auth_method FROM pg_hba_file_rules "
        "WHERE error IS NULL ORDER BY line_number")
    assert "host|payroll_prod|payroll|10.0.0.0|scram-sha-256" in rules.splitlines()
    assert cluster.psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_postgresql_setup_creates_role_and_database(cluster: Cluster, tmp_path: Path) -> None:
    create_database(cluster, tmp_path, TRICKY)
    assert cluster.psql(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'payroll_prod'"
    ) == "payroll"
    assert cluster.psql("SELECT current_user", user="payroll", password=TRICKY) == "payroll"
    # Idempotent; a rotated secret is applied on the next run.
    create_database(cluster, tmp_path, "rotated-secret-2")
    assert cluster.psql("SELECT 1", user="payroll", password="rotated-secret-2") == "1"
    with pytest.raises(Exception, match="password authentication failed"):
        cluster.psql("SELECT 1", user="payroll", password=TRICKY)


@pytest.fixture(scope="module")
def app(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The sample app from the rendered files, under Debian's puma, on the cluster."""
    work = tmp_path_factory.mktemp("app")
    secret = f"app-{uuid.uuid4().hex}"
    create_database(cluster, work, secret)
    files = files_of(MANIFESTS[-1])
    env_script = write_script(work, files["/usr/lib/amibake/setup/app-env.sh"])
    run([env_script], env={
        "AMIBAKE_HOSTS_ENV": str(work / "none.env"),
        "AMIBAKE_APP_ENV": str(work / "app.env"),
        "AMIBAKE_SECRET_TOOL": str(fake_secret_tool(work, secret)),
    })
    url = (work / "app.env").read_text().strip().split("=", 1)[1]
    url = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{cluster.port}/")
    for path, file in files.items():
        if path.startswith("/srv/app/"):
            target = work / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
    uploads = work / "uploads"
    uploads.mkdir()
    port = free_port()
    with serving(["puma", "--bind", f"tcp://127.0.0.1:{port}", "--threads", "2:2",
                  "--environment", "production", str(work / "srv/app/config.ru")],
                 port, work / "puma.log", cwd=work / "srv/app",
                 env={**os.environ, "DATABASE_URL": url, "UPLOADS_DIR": str(uploads),
                      "RACK_ENV": "production"}):
        yield port, uploads


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_sample_app_ruby_syntax() -> None:
    for path in sorted((ROOT / "cloudinit/app").rglob("*.r[bu]")):
        result = subprocess.run(["ruby", "-c", str(path)], capture_output=True, text=True)
        assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr
    bad = subprocess.run(["ruby", "-c", "-e", "def x("], capture_output=True, text=True)
    assert bad.returncode != 0


def test_sample_app_health_and_employees(app: tuple[int, Path]) -> None:
    port, _ = app
    assert request(port, "GET", "/health") == (200, b"ok\n")
    status, data = request(port, "POST", "/employees", b"name=Ada+%3Cb%3E&salary=4200.50",
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201, data
    status, data = request(port, "POST", "/employees", json.dumps({"name": "Grace"}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 201
    status, data = request(port, "GET", "/employees")
    names = [(e["name"], e["salary"]) for e in json.loads(data)]
    assert ("Ada <b>", "4200.50") in names and ("Grace", "0.00") in names
    status, page = request(port, "GET", "/")
    assert status == 200 and b"<td>Ada &lt;b&gt;</td>" in page
    assert request(port, "POST", "/employees", b"salary=1",
                   {"Content-Type": "application/x-www-form-urlencoded"})[0] == 400


def test_sample_app_uploads(app: tuple[int, Path]) -> None:
    import hashlib

    port, uploads = app
    content = os.urandom(300_000)
    boundary = "amibaketestboundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"payslip.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    status, data = request(port, "POST", "/uploads", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201, data
    assert json.loads(data) == {"name": "payslip.pdf", "size": len(content),
                                "sha256": hashlib.sha256(content).hexdigest()}
    assert (uploads / "payslip.pdf").read_bytes() == content
    status, data = request(port, "POST", "/uploads?name=raw.bin", b"raw bytes",
                           {"Content-Type": "application/octet-stream"})
    assert status == 201 and (uploads / "raw.bin").read_bytes() == b"raw bytes"
    assert request(port, "POST", "/uploads?name=../etc/passwd", b"x",
                   {"Content-Type": "application/octet-stream"})[0] == 400
    assert sorted(p.name for p in uploads.iterdir()) == ["payslip.pdf", "raw.bin"]


def test_sample_app_error_pages(app: tuple[int, Path]) -> None:
    port, _ = app
    status, data = request(port, "GET", "/no/such/page")
    assert status == 404 and b"Page not found" in data


def test_sample_app_health_fails_without_the_database(
    app: tuple[int, Path], cluster: Cluster
) -> None:
    port, _ = app
    cluster.stop()
    status, data = request(port, "GET", "/health")
    assert status == 503 and data.startswith(b"database unavailable")
    status, data = request(port, "GET", "/employees")
    assert status == 500 and b"Something went wrong" in data
