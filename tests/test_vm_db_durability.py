"""The db role survives its server, booted for real: a baked image of the seed
manifest with `backup` set, under qemu, with amibake's IMDS emulator (role
credentials, secrets) and moto's S3 over TLS on this host, reached from the
guest through a guestfwd relay like the metadata service's (the image trusts
the test CA through `repository.ca_file`).

One story, VM by VM (each waits for the previous): (a)+(c) a first db instance
finds the repository empty → new cluster + first full backup in S3; rows are
written and archived; the instance is stopped and started (same id, same root
disk, blank instance store) → the dispatcher does nothing, the boot unit
restores, the rows are there. (b) a NEW db instance of the same stack → rows
restored before PostgreSQL starts (the unit finished before it). Bad input: a
third instance with a wrong passphrase → one journal line, PostgreSQL not running.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.bake.pipeline import bake
from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.vm.accel import detect_accel
from builder.vm.boottest import wait_boot_finished, wait_ssh
from builder.vm.imds import imds_server
from builder.vm.metadata import LocalInstanceIdentity, local_user_data, new_instance_id
from builder.vm.qemu import Vm, VmSpec
from builder.vm.ssh import Ssh, SshKey, generate_key
from builder.wait import NotYet, Waiter, wait_for
from tests.bake_fixture import bake_options
from tests.db_fixtures import BUCKET, PASSPHRASE_REF, S3, manifest_with_backup, serve_s3_tls

pytestmark = [pytest.mark.vm, pytest.mark.bake, pytest.mark.timeout(5400)]

#: where the guest reaches moto's S3 (relayed to the host's loopback port)
S3_GUEST_ADDRESS = "169.254.169.253"
PREFIX = "vmstack"


@dataclass
class Stack:
    manifest: Manifest
    disk: Path
    s3: S3
    host_port: int
    key: SshKey
    workdir: Path
    passphrase: str = "the stack's own passphrase"
    db_password: str = "app-role-password-1"

    def identity(self, instance_id: str, passphrase: str | None = None) -> LocalInstanceIdentity:
        db = self.manifest.app.database.password
        return LocalInstanceIdentity(
            instance_id=instance_id, role="db", instance_type="t3.small",
            public_key=self.key.openssh_public(),
            user_data=local_user_data(self.manifest, "db", baked=True),
            secrets={db.name: self.db_password,
                     PASSPHRASE_REF: passphrase or self.passphrase})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("dbvm")
    with serve_s3_tls(extra_ip=S3_GUEST_ADDRESS) as s3:
        host_port = int(s3.endpoint.rpartition(":")[2])
        guest_s3 = S3(f"{S3_GUEST_ADDRESS}:443", s3.ca_file)
        path = manifest_with_backup(work, guest_s3, prefix=PREFIX, archive_timeout=5)
        manifest = load_manifest(path)
        result = bake(manifest, bake_options(work / "images"), say=lambda _t: None)
        key = generate_key(work / "id_ed25519", comment="amibake-dbvm")
        try:
            yield Stack(manifest, result.image.disk_path, s3, host_port, key, work)
        finally:
            shutil.rmtree(work / "images", ignore_errors=True)


@contextmanager
def booted(stack: Stack, identity: LocalInstanceIdentity, name: str, *,
           keep_root: bool = False) -> Iterator[Ssh]:
    """A db VM up to 'boot finished' (running or degraded), then killed."""
    with imds_server(identity) as imds:
        spec = VmSpec(disk=stack.disk, imds_port=imds.port, instance_id=identity.instance_id,
                      timeout=1500, keep_root=keep_root,
                      forwards=((S3_GUEST_ADDRESS, 443, stack.host_port),))
        with Vm(spec, stack.workdir / name, accel=detect_accel()) as vm:
            ssh = Ssh(stack.key, vm.ports.ssh, stack.manifest.image.login_user)
            wait_ssh(vm, ssh)
            wait_boot_finished(vm, ssh)
            yield ssh
            if keep_root:  # a clean stop: the root disk keeps what the guest wrote
                ssh.run("sudo sync; sudo systemctl poweroff", timeout=60)
                wait_for(lambda: _exited(vm), Waiter("the guest to power off", attempts=120,
                                                     interval=2, timeout=300))


def _exited(vm: Vm) -> None:
    assert vm.proc is not None
    if vm.proc.poll() is None:
        raise NotYet("qemu still runs")


def journal(ssh: Ssh, unit: str) -> str:
    return ssh.output(f"sudo journalctl -b -o cat --no-pager -u {unit}")


def sql(ssh: Ssh, query: str, db: str = "postgres") -> str:
    return ssh.output(f"sudo -u postgres psql -X -A -t -d {db} -c \"{query}\"").strip()


def app_sql(stack: Stack, ssh: Ssh, query: str) -> str:
    """`query` as the app's own role, over TCP with its password (as the app and its
    migrations do: the tables are the app's)."""
    app = stack.manifest.app.database
    return ssh.output(f"PGPASSWORD={stack.db_password} psql -X -A -t -h 127.0.0.1 "
                      f"-U {app.user} -d {app.name} -c \"{query}\"").strip()


def _backups(stack: Stack) -> list[str]:
    listed = stack.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/backup/")
    return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith("backup.manifest")]


def test_db_survives_stop_start_and_replacement(stack: Stack) -> None:
    db = stack.manifest.app.database.name
    first = stack.identity(new_instance_id())
    # (a) empty repository: a new cluster and its first full backup, at once
    with booted(stack, first, "first", keep_root=True) as ssh:
        log = journal(ssh, "amibake-db-restore")
        assert "holds no backup: a new cluster" in log, log
        assert "first full backup taken" in log, log
        assert ssh.run("systemctl is-active postgresql@15-main").stdout.strip() == "active"
        assert len(_backups(stack)) == 1
        assert ssh.run("systemctl is-enabled amibake-backup-full.timer").stdout.strip() \
            == "enabled"
        app_sql(stack, ssh, "CREATE TABLE pay (id int PRIMARY KEY, note text); "
                "INSERT INTO pay SELECT g, 'row ' || g FROM generate_series(1, 300) g")
        segment = sql(ssh, "SELECT pg_walfile_name(pg_switch_wal())")

        def archived() -> None:
            last = sql(ssh, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if last < segment:
                raise NotYet(f"archived {last or 'nothing'}, want {segment}")
        wait_for(archived, Waiter("the WAL with the rows archived", attempts=120, interval=2,
                                  timeout=300))

    # (c) stop/start: same id, same root disk, blank instance store
    with booted(stack, first, "first", keep_root=True) as ssh:
        assert "already applied" in journal(ssh, "amibake-dispatch")
        log = journal(ssh, "amibake-db-restore")
        assert "restoring (latest) before PostgreSQL accepts connections" in log, log
        assert "restored /mnt/" in log, log
        assert sql(ssh, "SELECT count(*) FROM pay", db) == "300"
        assert ssh.run("systemctl is-active postgresql@15-main").stdout.strip() == "active"
        sysid = sql(ssh, "SELECT system_identifier FROM pg_control_system()")
    (stack.workdir / "first" / "overlay.qcow2").unlink()

    # (b) a new instance of the same stack: restored before PostgreSQL starts
    with booted(stack, stack.identity(new_instance_id()), "second") as ssh:
        log = journal(ssh, "amibake-db-restore")
        assert f"system identifier {sysid}" in log, log
        assert sql(ssh, "SELECT count(*), max(note) FROM pay", db) == "300|row 99"
        done = ssh.output("systemctl show -p ExecMainExitTimestampMonotonic --value "
                          "amibake-db-restore").strip()
        started = ssh.output("systemctl show -p ExecMainStartTimestampMonotonic --value "
                             "postgresql@15-main").strip()
        assert 0 < int(done) <= int(started)
        # the app's role logs in over TCP with its password and reads its rows
        assert app_sql(stack, ssh, "SELECT count(*) FROM pay") == "300"

    # bad input: a passphrase that does not decrypt the repository
    with booted(stack, stack.identity(new_instance_id(), "not the passphrase"), "bad") as ssh:
        lines = [ln for ln in journal(ssh, "amibake-db-restore").splitlines()
                 if ln.endswith("(PostgreSQL not started)")]
        assert len(lines) == 1 and "cannot use the backup repository" in lines[0], lines
        assert ssh.run("systemctl is-active postgresql@15-main").stdout.strip() != "active"
        assert ssh.run("sudo test -e /mnt/postgresql/15/main/PG_VERSION").returncode != 0
