"""amibake-migrate (cloudinit/rails/amibake-migrate): migrations exactly once per release.

Run for real as the image runs it: the wrapper in a copy of the Rails sample,
Debian's Ruby, Rails 6.1 and pg gem, against a real PostgreSQL 15 cluster
(unprivileged, on loopback). Two instances booting the same release at once
queue on the wrapper's advisory lock: the migration runs once and both exit
0 (Rails' own lock alone would fail the loser). A failing migration exits
non-zero with the migration's error and is not recorded as done.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from builder.wait import NotYet, Waiter, wait_for
from tests.cutover_fixtures import (
    Cluster,
    destroy_cluster,
    pg_template,  # noqa: F401  (session fixture used by `db`)
    start_cluster,
)
from tests.test_sample_rails import (
    APP,
    DB_PASSWORD,
    DB_USER,
    MIGRATION_VERSION,
    create_database,
    rails_env,
)

ROOT = Path(__file__).resolve().parent.parent
MIGRATE = ROOT / "cloudinit" / "rails" / "amibake-migrate"
#: The wrapper's advisory lock key (the bytes "amibakmg" as a 64-bit number).
LOCK_KEY = 0x616d6962616b6d67


@pytest.fixture(scope="module")
def db(pg_template: Path) -> Iterator[Cluster]:  # noqa: F811
    cluster = start_cluster(pg_template, "migrate")
    try:
        cluster.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'", dbname="postgres")
        yield cluster
    finally:
        destroy_cluster(cluster)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    copy = tmp_path / "app"
    shutil.copytree(APP, copy)
    return copy


def start(app: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(MIGRATE)], cwd=app, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode(errors="replace")


def test_two_instances_booting_the_same_release_migrate_once_and_both_proceed(
        db: Cluster, app: Path) -> None:
    """The test holds the wrapper's lock until both processes are waiting on it
    (seen in pg_locks), so they really arrive together; then lets go."""
    create_database(db, "payroll_twice")
    env = rails_env(db, "payroll_twice")
    dsn = db.dsn("payroll_twice", DB_USER, DB_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        procs = [start(app, env) for _ in range(2)]
        try:
            def both_waiting() -> None:
                waiting = db.sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND NOT granted", dbname="payroll_twice")[0][0]
                if waiting != 2:
                    for p in procs:
                        if p.poll() is not None:
                            raise AssertionError(finish(p))
                    raise NotYet(f"{waiting} of 2 waiting on the lock")
            wait_for(both_waiting, Waiter("both migrations waiting", attempts=300, interval=0.5))
            assert db.sql("SELECT to_regclass('employees')", dbname="payroll_twice") == [(None,)]
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        results = [finish(p) for p in procs]
    for rc, err in results:
        assert rc == 0, err
        assert "ConcurrentMigrationError" not in err
    ran = [err for _, err in results if "running db:migrate" in err]
    skipped = [err for _, err in results if "already ran: nothing to do" in err]
    assert len(ran) == 1 and len(skipped) == 1, results
    assert "CreateEmployeesAndPaychecks: migrating" in ran[0]
    assert "CreateEmployeesAndPaychecks" not in skipped[0]
    assert db.sql("SELECT version FROM schema_migrations", dbname="payroll_twice") == \
        [(MIGRATION_VERSION,)]
    # A later boot of the same release: nothing to do, no Rails started.
    rc, err = finish(start(app, env))
    assert rc == 0 and "already ran" in err and "db:migrate" not in err, err


def test_a_failing_migration_stops_the_release_with_its_error(db: Cluster, app: Path) -> None:
    create_database(db, "payroll_broken")
    env = rails_env(db, "payroll_broken")
    (app / "db" / "migrate" / "20261201000000_add_a_broken_column.rb").write_text(
        "class AddABrokenColumn < ActiveRecord::Migration[6.1]\n"
        "  def change\n"
        "    add_column :no_such_table_here, :rate, :integer\n"
        "  end\n"
        "end\n")
    rc, err = finish(start(app, env))
    assert rc != 0
    assert 'relation "no_such_table_here" does not exist' in err, err
    assert "db:migrate failed" in err and "app servers stay down" in err
    versions = db.sql("SELECT version FROM schema_migrations ORDER BY 1",
                      dbname="payroll_broken")
    assert versions == [(MIGRATION_VERSION,)]  # the broken one is not recorded
    # The lock went with the process: the next attempt runs (and fails) again.
    rc, err = finish(start(app, env))
    assert rc != 0 and "running db:migrate (1 pending: 20261201000000)" in err, err


def test_an_app_without_migrations_has_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "config.ru").write_text("run ->(env) { [200, {}, []] }\n")
    done = subprocess.run([str(MIGRATE)], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, check=False)
    assert done.returncode == 0
    assert b"nothing to do" in done.stderr


def test_without_database_url_one_line(app: Path) -> None:
    done = subprocess.run([str(MIGRATE)], cwd=app, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, check=False)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "amibake-migrate: DATABASE_URL is not set (see /etc/amibake/app.env)"]
