"""The db role's boot with backups configured, run on this host: the rendered
setup script's `write_cipher prepare_data` steps (what amibake-db-restore.service
runs before PostgreSQL on every boot) against real PostgreSQL 15, pgBackRest and
moto's S3 over TLS (repository encrypted).

One story per test: an empty repository gives a new cluster, its stanza and a
first full backup; rows written and archived; the data directory blanked (the
instance store of a stopped or replaced instance) → restored with every row and
the same system identifier; a wrong passphrase or bucket → one line, exit 1, no
cluster and nothing listening.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from builder.render import pgbackrest as engine
from builder.render.postgresql import render
from tests.cutover_fixtures import PG_BIN, PG_OS_USER, _own_tmpdir, free_port
from tests.db_fixtures import S3, manifest_with_backup, s3_tls

__all__ = ["s3_tls"]

PASSPHRASE = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Node:
    """One db "instance" on this host: its rendered setup script and files."""

    base: Path
    script: Path
    data: Path
    conf: Path
    sock: Path
    port: int
    env: dict[str, str]

    def boot(self) -> subprocess.CompletedProcess[str]:
        """What amibake-db-restore.service runs at boot."""
        return subprocess.run([str(self.script)], env=self.env, capture_output=True,
                              text=True, timeout=600, check=False)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", PG_OS_USER, "--", str(PG_BIN / "pg_ctl"),
                               "-D", str(self.conf), *args], env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return subprocess.run(["runuser", "-u", PG_OS_USER, "--", str(PG_BIN / "psql"), "-X",
                               "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
                               "-p", str(self.port), "-d", db, "-c", sql], env=self.env,
                              capture_output=True, text=True, timeout=120,
                              check=True).stdout.strip()

    def listening(self) -> bool:
        return (self.sock / f".s.PGSQL.{self.port}").exists()


def _node(base: Path, s3: S3, prefix: str, *, passphrase: str = PASSPHRASE,
          bucket: str = "amibake-backups", key_type: str = "shared") -> Node:
    """`key_type="auto"`: S3 credentials from instance metadata, as on an instance."""
    manifest = load_manifest(manifest_with_backup(base, s3, prefix=prefix, bucket=bucket))
    data, conf, sock, inc = base / "data", base / "conf", base / "sock", base / "conf.d"
    for d in (conf, sock, inc):
        d.mkdir()
        shutil.chown(d, PG_OS_USER, PG_OS_USER)
    port = free_port()
    pgb_conf = base / "pgbackrest.conf"
    pgb_conf.write_text(engine.pgbackrest_conf(
        manifest, pg_path=str(data), pg_port=port, pg_socket_path=str(sock),
        instance=engine.Instance(log_path=str(base / "log"), spool_path=str(base / "spool"),
                                 lock_path=str(base / "lock"), key_type=key_type)))
    settings = engine.postgresql_settings(manifest, config=str(pgb_conf), include_dir=str(inc))
    (conf / "pg_hba.conf").write_text("local all all trust\n")
    (conf / "postgresql.conf").write_text("\n".join([
        f"data_directory = '{data}'", f"hba_file = '{conf}/pg_hba.conf'",
        f"port = {port}", f"unix_socket_directories = '{sock}'",
        "listen_addresses = '127.0.0.1'", "fsync = off", "shared_buffers = 32MB",
        *(f"{k} = {v}" for k, v in settings.items()), ""]))
    fragment = render(manifest, manifest.roles["db"])
    script = base / "postgresql.sh"
    script.write_bytes(next(f.content for f in fragment.files if f.path.endswith(".sh")))
    script.chmod(0o755)
    secret = base / "amibake-secret"
    secret.write_text(f"#!/bin/sh\n[ \"$1\" = backup_passphrase ] || exit 1\n"
                      f"printf '%s' '{passphrase}'\n")
    secret.chmod(0o755)
    (base / "tmp").mkdir()
    env = {
        "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "TMPDIR": str(base / "tmp"),
        "AMIBAKE_PG_STEPS": "write_cipher prepare_data",
        "AMIBAKE_PG_DATA": str(data), "AMIBAKE_PG_CONF_DIR": str(conf),
        "AMIBAKE_PG_SOCKET": str(sock), "AMIBAKE_PG_PORT": str(port),
        "AMIBAKE_PG_OS_USER": PG_OS_USER,
        "AMIBAKE_PGBACKREST_CONFIG": str(pgb_conf), "AMIBAKE_PGBACKREST_INCLUDE": str(inc),
        "AMIBAKE_RESTORE_COMMAND": engine.restore_command(
            manifest, config=str(pgb_conf), include_dir=str(inc)),
        "AMIBAKE_SECRET_TOOL": str(secret),
    }
    if key_type == "shared":
        env.update(PGBACKREST_REPO1_S3_KEY="testing", PGBACKREST_REPO1_S3_KEY_SECRET="testing")
    for d in ("log", "spool", "lock"):
        (base / d).mkdir()
        shutil.chown(base / d, PG_OS_USER, PG_OS_USER)
    return Node(base, script, data, conf, sock, port, env)


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = _own_tmpdir("amibake-dbboot-", PG_OS_USER)
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("amibake-postgresql:")]


def test_new_cluster_backup_then_blank_disk_restores_every_row(
        s3_tls: S3, workdir: Path) -> None:
    node = _node(workdir, s3_tls, "dbboot-story")
    # (a) empty repository: a new cluster, its stanza and a first full backup
    first = node.boot()
    assert first.returncode == 0, first.stderr
    assert any("holds no backup: a new cluster" in ln for ln in _lines(first))
    assert any("first full backup taken" in ln for ln in _lines(first))
    assert (node.data / "PG_VERSION").is_file() and not node.listening()
    cipher = workdir / "conf.d" / "amibake-cipher.conf"
    assert oct(cipher.stat().st_mode & 0o777) == "0o600"
    keys = [o["Key"] for o in s3_tls.client().list_objects_v2(
        Bucket="amibake-backups", Prefix="dbboot-story/backup/")["Contents"]]
    assert any(k.endswith("F/backup.manifest") for k in keys)

    # the data survives a normal reboot untouched
    again = node.boot()
    assert again.returncode == 0 and any("holds a cluster" in ln for ln in _lines(again))

    # rows written and archived; then the instance store comes back blank
    assert node.pg_ctl("-w", "-l", str(workdir / "pg.log"), "start").returncode == 0
    node.psql("CREATE DATABASE payroll")
    node.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 500)",
              db="payroll")
    sysid = node.psql("SELECT system_identifier FROM pg_control_system()")
    node.psql("SELECT pg_switch_wal()")
    segment = node.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    node.psql("CHECKPOINT")
    # a clean stop archives the last segment (archive_mode on waits for it)
    assert node.pg_ctl("-m", "fast", "-w", "stop").returncode == 0
    assert segment
    shutil.rmtree(node.data)

    # (b)/(c) blank data directory: restored before anyone can connect
    restored = node.boot()
    assert restored.returncode == 0, restored.stderr
    assert any("restoring (latest) before PostgreSQL accepts connections" in ln
               for ln in _lines(restored))
    assert any(f"system identifier {sysid}" in ln for ln in _lines(restored))
    assert not node.listening()
    assert node.pg_ctl("-w", "-l", str(workdir / "pg2.log"), "start").returncode == 0
    try:
        assert node.psql("SELECT count(*), sum(id) FROM t", db="payroll") == "500|125250"
        assert node.psql("SELECT pg_is_in_recovery()") == "f"
        assert node.psql("SELECT system_identifier FROM pg_control_system()") == sysid
    finally:
        node.pg_ctl("-m", "fast", "-w", "stop")


def test_wrong_passphrase_leaves_no_cluster(s3_tls: S3, workdir: Path) -> None:
    (workdir / "a").mkdir()
    shutil.chown(workdir / "a", PG_OS_USER, PG_OS_USER)
    first = _node(workdir / "a", s3_tls, "dbboot-pass").boot()
    assert first.returncode == 0, first.stderr
    (workdir / "b").mkdir()
    shutil.chown(workdir / "b", PG_OS_USER, PG_OS_USER)
    other = _node(workdir / "b", s3_tls, "dbboot-pass", passphrase="not the passphrase")
    bad = other.boot()
    assert bad.returncode == 1
    lines = _lines(bad)
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("amibake-postgresql: cannot use the backup repository "
                               "s3://amibake-backups/dbboot-pass")
    assert lines[0].endswith("(PostgreSQL not started)")
    assert not other.data.exists() or not any(other.data.iterdir())
    assert not other.listening()
    assert not any((other.base / "tmp").iterdir())  # no private server log left


def test_wrong_bucket_leaves_no_cluster(s3_tls: S3, workdir: Path) -> None:
    node = _node(workdir, s3_tls, "dbboot-nobucket", bucket="no-such-bucket")
    bad = node.boot()
    assert bad.returncode == 1
    lines = _lines(bad)
    assert len(lines) == 1, bad.stderr
    assert "the backup repository s3://no-such-bucket/dbboot-nobucket: " in lines[0]
    assert "bucket" in lines[0].lower() or "404" in lines[0], lines[0]
    assert not node.data.exists() and not node.listening()
    assert not any((node.base / "tmp").iterdir())  # no private server log left


def test_db_role_renders_the_engine_only_with_backup(tmp_path: Path) -> None:
    plain = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    fragment = render(plain, plain.roles["db"])
    assert "pgbackrest" not in fragment.packages
    assert not any("pgbackrest" in f.path or "amibake-db-restore" in f.path
                   for f in fragment.files)

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    manifest = load_manifest(manifest_with_backup(
        tmp_path, S3("localhost:9443", ca), prefix="stack1"))
    fragment = render(manifest, manifest.roles["db"])
    files = {f.path: f for f in fragment.files}
    assert "pgbackrest" in fragment.packages
    # PostgreSQL first, then the backup timers the dispatcher enables
    assert fragment.services == ("postgresql@15-main.service", "amibake-backup-diff.timer",
                                 "amibake-backup-full.timer")
    conf = files["/etc/pgbackrest/pgbackrest.conf"]
    assert (conf.mode, conf.owner) == (0o640, "root:postgres")
    assert b"repo1-s3-key-type=auto\n" in conf.content  # instance profile via IMDSv2
    assert b"repo1-storage-ca-file=/etc/pgbackrest/amibake-ca.pem\n" in conf.content
    assert files["/etc/pgbackrest/amibake-ca.pem"].content == ca.read_bytes()
    assert b"cipher-pass" not in conf.content  # the passphrase is resolved at boot
    dropin = files["/etc/systemd/system/postgresql@.service.d/amibake-instance-store.conf"]
    assert b"Requires=amibake-db-restore.service\nAfter=amibake-db-restore.service\n" \
        in dropin.content
    unit = files["/etc/systemd/system/amibake-db-restore.service"].content.decode()
    assert 'Environment="AMIBAKE_PG_STEPS=mount_store write_cipher prepare_data"' in unit
    assert "Before=postgresql@15-main.service" in unit
    pgconf = files["/etc/amibake/postgresql/amibake.conf"].content.decode()
    assert "archive_mode = on\n" in pgconf and "archive_timeout = 60\n" in pgconf
    assert "archive_command = '/usr/bin/pgbackrest --config=/etc/pgbackrest/pgbackrest.conf" \
        in pgconf
    script = files["/usr/lib/amibake/setup/postgresql.sh"].content.decode()
    assert "AMIBAKE_PG_STEPS:-start_postgresql create_database}" in script
    assert "correct horse" not in script

    from builder.render.base import roles_json
    assert json.loads(roles_json(manifest, {}))["secrets"]["backup_passphrase"] == {
        "store": "ssm", "name": "/smallpayroll/backup-passphrase"}


def test_restore_on_boot_targets() -> None:
    from builder.manifest.backup_model import Backup, Repository
    repo = Repository(bucket="amibake-backups")
    assert engine.boot_restore_args(Backup(repository=repo)) == []
    assert engine.boot_restore_args(Backup(repository=repo, restore_on_boot="20261130-010000F")) \
        == ["--set=20261130-010000F", "--type=immediate", "--target-action=promote"]
    assert engine.boot_restore_args(
        Backup(repository=repo, restore_on_boot="2026-11-30T12:00:00+00:00")) == \
        ["--type=time", "--target=2026-11-30 12:00:00.000000+0000", "--target-action=promote"]


def test_vm_forwards_more_guest_addresses(tmp_path: Path) -> None:
    from builder.vm.accel import TCG_ARGS, Accel
    from builder.vm.firmware import prepare_firmware
    from builder.vm.qemu import Ports, VmPaths, VmSpec, build_command
    spec = VmSpec(disk=tmp_path / "disk.raw", imds_port=41234, instance_id="i-0123456789abcdef0",
                  forwards=(("169.254.169.253", 443, 50443),))
    cmd = build_command(spec, VmPaths(tmp_path), Ports(ssh=1, http=2),
                        prepare_firmware("uefi", tmp_path), Accel("tcg", TCG_ARGS, "test"),
                        python="/py")
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "guestfwd=tcp:169.254.169.253:443-cmd:/py -S -I " in netdev
    assert netdev.count("guestfwd=") == 2 and "50443" in netdev


def _instance_profile_boot(with_role: bool) -> dict[str, object]:
    """In a network namespace of its own (169.254.169.254 on its loopback, as an
    instance sees it): amibake's IMDS emulator (IMDSv2 tokens required) with or
    without an instance role, moto's S3 over TLS, and the boot steps with
    pgBackRest's `repo1-s3-key-type=auto`."""
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.test_db_boot", "--netns-boot",
         "role" if with_role else "no-role"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_credentials_come_from_the_instance_profile() -> None:
    with_role = _instance_profile_boot(True)
    assert with_role["rc"] == 0, with_role
    assert any("first full backup taken" in str(ln) for ln in with_role["lines"])  # type: ignore[attr-defined]
    # the emulator saw pgBackRest take an IMDSv2 token and read the role's credentials
    assert "PUT /latest/api/token" in with_role["requests"]  # type: ignore[operator]
    assert "GET /latest/meta-data/iam/security-credentials/amibake-instance" \
        in with_role["requests"]  # type: ignore[operator]

    no_role = _instance_profile_boot(False)
    assert no_role["rc"] == 1 and len(no_role["lines"]) == 1, no_role  # type: ignore[arg-type]
    line = str(no_role["lines"][0])  # type: ignore[index]
    assert line.startswith("amibake-postgresql: cannot use the backup repository "
                           "s3://amibake-backups/netns: ")
    assert "IAM role" in line and line.endswith("(PostgreSQL not started)")


def _netns_boot(with_role: bool) -> None:  # pragma: no cover - runs in the namespace
    from builder.imds import ImdsConfig, ImdsServer
    from tests.db_fixtures import serve_s3_tls

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True)
    base = _own_tmpdir("amibake-dbboot-netns-", PG_OS_USER)
    base.chmod(0o755)
    requests: list[str] = []
    try:
        config = ImdsConfig(iam_role="amibake-instance" if with_role else "")
        with ImdsServer(config, host="169.254.169.254", port=80) as imds, \
                serve_s3_tls() as s3:
            node = _node(base, s3, "netns", key_type="auto")
            done = node.boot()
            requests = [f"{r.method} {r.path}" for r in imds.requests]
        print(json.dumps({"rc": done.returncode, "lines": _lines(done), "requests": requests}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--netns-boot"]:
    _netns_boot(sys.argv[2] == "role")
