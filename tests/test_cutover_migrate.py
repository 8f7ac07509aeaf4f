"""The app's migrations inside the window, run on the new app server over the
cutover's SSH (a real sshd on loopback): applied before the smoke tests, and
a failed migration stops the run with its own error, DNS untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import rollback_cutover, run_cutover
from builder.cutover.steps import forward_steps
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    OLD_ADDR,
    SERVER_NAME,
    SUPER_PASSWORD,
    Cluster,
    Knot,
    Site,
    Sshd,
    cutover_manifest,
)


def _migration(tmp_path: Path, new: Cluster, sql: str) -> str:
    """A migration script on the "app server" (this machine, reached over SSH)."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{new.port}:payroll:postgres:{SUPER_PASSWORD}\n")
    passfile.chmod(0o600)
    script = tmp_path / "migrate.sh"
    script.write_text(
        "#!/bin/bash\nset -euo pipefail\necho '== 20261205 AddMigratedToEmployees: migrating'\n"
        f"PGPASSFILE={passfile} psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {new.port} "
        f"-U postgres -d payroll -c {sql!r}\n"
        "echo '== 20261205 AddMigratedToEmployees: migrated'\n")
    return f"bash {script}"


def test_migrations_run_after_the_copy_and_before_the_smoke_test(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], sshd: Sshd,
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cmd = _migration(tmp_path, new, "ALTER TABLE employees ADD COLUMN migrated boolean "
                                    "NOT NULL DEFAULT true")
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump",
                                  new_app=f"ssh:{sshd.login}",
                                  new_app_ssh_options=sshd.options, migrate_command=cmd))
    names = [s.name for s in forward_steps(cfg)]
    assert (names.index("db_dump_restore") < names.index("verify_checksums")
            < names.index("app_migrate") < names.index("smoke_new_site"))
    state = run_cutover(cfg, provider_for(cfg), tmp_path / "s.json", say=print, start_now=True)
    assert state.complete
    assert "AddMigratedToEmployees: migrated" in (state.step("app_migrate").detail or "")
    assert new.sql("SELECT count(*) FROM employees WHERE migrated") == [(500,)]
    assert old.sql("SELECT count(*) FROM information_schema.columns "
                   "WHERE column_name = 'migrated'") == [(0,)]
    assert knot.query(f"{SERVER_NAME}.")[0] == (NEW_ADDR,)


def test_a_failed_migration_stops_with_its_error_and_rolls_back(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site], sshd: Sshd,
    secret_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cmd = _migration(tmp_path, new, "ALTER TABLE no_such_table ADD COLUMN x int")
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump",
                                  new_app=f"ssh:{sshd.login}",
                                  new_app_ssh_options=sshd.options, migrate_command=cmd))
    dns = provider_for(cfg)
    path = tmp_path / "s.json"
    with pytest.raises(UserError) as info:
        run_cutover(cfg, dns, path, say=print, start_now=True)
    assert 'relation "no_such_table" does not exist' in str(info.value)
    assert "rollback" in info.value.hint
    assert knot.query(f"{SERVER_NAME}.")[0] == (OLD_ADDR,)
    rollback_cutover(cfg, dns, path, say=print)
    assert old.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    assert not sites[0].flag.exists()


def test_new_app_host_refused_at_load_and_run(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, tmp_path: Path,
) -> None:
    from builder.cutover import migrate

    old, new = pg_pair
    cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump", new_app="ssh:root@x",
                                  new_app_ssh_options=("-o", "ProxyCommand=touch /tmp/pwned")))
    with pytest.raises(UserError, match="ProxyCommand"):
        migrate.run_migrations(cfg)
