"""Backup and restore for real: PostgreSQL 15 archives WAL with pgBackRest into
moto's S3 (over TLS, repository encrypted); the cluster is destroyed and
`amibake db restore|verify|backups` bring it back from S3 alone."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from builder.cli import main
from builder.db.repo import Repo, open_repo
from builder.manifest import load_manifest
from builder.wait import NotYet, Waiter, wait_for
from tests.cutover_fixtures import PG_OS_USER, Cluster, _own_tmpdir, free_port, pg_template
from tests.db_fixtures import (
    BUCKET,
    PASSPHRASE_ENV,
    S3,
    archiving_cluster,
    full_backup,
    manifest_with_backup,
    no_aws_credentials,
    s3_tls,
)

__all__ = ["pg_template", "s3_tls"]  # fixtures used here

BATCH = 100


@dataclass
class Scenario:
    manifest: Path
    between: datetime  # after batch 1 committed, before batch 2
    full_label: str
    expected: list[tuple[object, ...]]


def _archived_cluster(stack: ExitStack, repo: Repo, template: Path, name: str) -> Cluster:
    """A cluster archiving into `repo` with the table `rows` and a full backup."""
    cluster = archiving_cluster(stack, repo, template, name)
    cluster.sql("CREATE DATABASE payroll", dbname="postgres")
    cluster.sql("CREATE TABLE rows (id int PRIMARY KEY, batch int NOT NULL, note text)")
    full_backup(repo, cluster)
    return cluster


def _switch_and_wait(cluster: Cluster) -> None:
    """Close the current WAL segment and wait until the archiver has pushed it."""
    segment = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]

    def archived() -> None:
        row = cluster.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
        if row[0] is None or str(row[0]) < str(segment):
            raise NotYet(f"archived {row[0]}, failed {row[1]}, want {segment}")

    wait_for(archived, Waiter(f"WAL {segment} archived", attempts=600, interval=0.2))


@pytest.fixture(scope="module")
def scenario(s3_tls: S3, pg_template: Path) -> Iterator[Scenario]:
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    work = Path(tempfile.mkdtemp(prefix="amibake-dbtest-"))
    try:
        path = manifest_with_backup(work, s3_tls, prefix="roundtrip")
        with ExitStack() as stack:
            repo = stack.enter_context(open_repo(load_manifest(path)))
            cluster = _archived_cluster(stack, repo, pg_template, "bk")
            label = repo.info().backups[-1].label
            insert = "INSERT INTO rows SELECT g, %s, %s FROM generate_series(%s::int, %s::int) g"
            cluster.sql(insert, (1, "first", 1, BATCH))
            between = cluster.sql("SELECT clock_timestamp()")[0][0]
            cluster.sql(insert, (2, "second", BATCH + 1, 2 * BATCH))
            expected = cluster.sql("SELECT id, batch, note FROM rows ORDER BY id")
            _switch_and_wait(cluster)
            assert isinstance(between, datetime)
        # the cluster and its data directory are gone now; only S3 holds the data
        yield Scenario(path, between, label, expected)
    finally:
        mp.undo()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")


@pytest.fixture
def target_dir() -> Iterator[Path]:
    base = _own_tmpdir("amibake-restore-", PG_OS_USER)
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


def _restored_rows(pgdata: Path) -> list[tuple[object, ...]]:
    """Start the restored directory as a cluster and read the table back."""
    cluster = Cluster("restored", pgdata, free_port())
    cluster.start()
    try:
        return cluster.sql("SELECT id, batch, note FROM rows ORDER BY id")
    finally:
        cluster.stop()


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_restore_latest_brings_back_every_committed_row(
        scenario: Scenario, env: None, target_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _cli_json(capsys, "db", "restore", str(scenario.manifest),
                          "--pgdata", str(target_dir))
    assert code == 0, doc
    assert doc["backup"]["label"] == scenario.full_label  # type: ignore[index]
    rows = _restored_rows(target_dir)
    assert rows == scenario.expected
    assert len(rows) == 2 * BATCH


def test_point_in_time_restore_stops_between_the_batches(
        scenario: Scenario, env: None, target_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _cli_json(capsys, "db", "restore", str(scenario.manifest),
                          "--to", scenario.between.isoformat(), "--pgdata", str(target_dir))
    assert code == 0, doc
    rows = _restored_rows(target_dir)
    assert rows == [r for r in scenario.expected if r[1] == 1]
    assert len(rows) == BATCH


def test_restore_to_a_backup_label_has_the_state_at_that_backup(
        scenario: Scenario, env: None, target_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _cli_json(capsys, "db", "restore", str(scenario.manifest),
                          "--to", scenario.full_label, "--pgdata", str(target_dir))
    assert code == 0, doc
    assert _restored_rows(target_dir) == []  # the table existed, empty, at the backup


def test_backups_lists_the_full_backup_and_the_wal_range(
        scenario: Scenario, env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _cli_json(capsys, "db", "backups", str(scenario.manifest))
    assert code == 0, doc
    assert doc["repository"] == f"s3://{BUCKET}/roundtrip"
    [backup] = doc["backups"]  # type: ignore[misc]
    assert backup["label"] == scenario.full_label and backup["type"] == "full"
    assert backup["size"] > 0 and backup["repo_size"] > 0
    assert backup["start"] <= backup["stop"]
    wal = doc["wal"]
    assert wal["min"] <= backup["wal_start"] <= backup["wal_stop"] < wal["max"]  # type: ignore


def test_verify_restores_into_a_scratch_cluster_and_checks_it(
        scenario: Scenario, env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _cli_json(capsys, "db", "verify", str(scenario.manifest))
    assert code == 0, doc
    assert doc["amcheck"] == "ok"
    databases = {d["name"]: d for d in doc["databases"]}  # type: ignore[attr-defined]
    assert databases["payroll"]["tables"] == 1


# ------------------------------------------------------------------ bad input


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, doc = _cli_json(capsys, *argv)
    assert code == 1, doc
    assert doc["ok"] is False
    assert "\n" not in str(doc["error"])
    return doc


def test_a_passphrase_that_does_not_match_is_one_line_and_restores_nothing(
        scenario: Scenario, env: None, target_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    doc = _error(capsys, "db", "restore", str(scenario.manifest), "--pgdata", str(target_dir))
    assert "passphrase" in str(doc["hint"]), doc
    assert not target_dir.exists()


def test_a_wrong_bucket_is_one_line(
        s3_tls: S3, env: None, target_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest_with_backup(tmp_path, s3_tls, prefix="roundtrip", bucket="no-such-bucket")
    doc = _error(capsys, "db", "restore", str(path), "--pgdata", str(target_dir))
    assert "s3://no-such-bucket/roundtrip" in str(doc["error"])
    assert "bucket" in str(doc["hint"])
    assert not target_dir.exists()


def test_no_credentials_is_one_line(
        scenario: Scenario, target_dir: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_aws_credentials(monkeypatch, tmp_path / "none")
    doc = _error(capsys, "db", "verify", str(scenario.manifest))
    assert "no AWS credentials" in str(doc["error"])


def test_an_empty_repository_never_becomes_an_empty_cluster(
        s3_tls: S3, env: None, target_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest_with_backup(tmp_path, s3_tls, prefix="nothing-here")
    doc = _error(capsys, "db", "restore", str(path), "--pgdata", str(target_dir))
    assert "holds no backup" in str(doc["error"])
    assert not target_dir.exists()


def test_a_corrupt_backup_fails_restore_and_verify_and_leaves_nothing(
        s3_tls: S3, pg_template: Path, env: None, target_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The damage is for good: pgBackRest's retries of a failed file (2, the second
    # after 15 s, per command) cannot help, so they are switched off here.
    monkeypatch.setenv("PGBACKREST_JOB_RETRY", "0")
    path = manifest_with_backup(tmp_path, s3_tls, prefix="damaged")
    with ExitStack() as stack:
        repo = stack.enter_context(open_repo(load_manifest(path)))
        _archived_cluster(stack, repo, pg_template, "damaged")
        label = repo.info().backups[-1].label
    s3 = s3_tls.client()
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"damaged/backup/smallpayroll/{label}/"
                                                      "pg_data/")["Contents"]
    biggest = max(objects, key=lambda o: o["Size"])
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=biggest["Key"])["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=biggest["Key"], Body=bytes(body))

    doc = _error(capsys, "db", "restore", str(path), "--pgdata", str(target_dir))
    assert "s3://amibake-backups/damaged" in str(doc["error"]), doc
    assert not target_dir.exists()
    doc = _error(capsys, "db", "verify", str(path))
    assert "damaged" in str(doc["error"])
