"""The cutover and the new db role's backups (issue 11 part 4), for real:
moto's S3 over TLS, pgBackRest, two PostgreSQL 15 clusters, Knot, nginx.

Pre-flight proves the repository writable (a probe object written, read back
and deleted) and refuses a wrong bucket or missing credentials before
anything changes; after the DNS switch, `backup_after_switch` leaves a full
backup in the repository that started after the switch."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from builder.cutover.backup_check import repo_writable
from builder.cutover.config import derive
from builder.cutover.dns import provider_for
from builder.cutover.procedure import run_cutover
from builder.cutover.state import CutoverState
from builder.cutover.steps import forward_steps
from builder.db.repo import Repo, open_repo
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import Manifest
from builder.render import pgbackrest
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    OLD_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    cutover_manifest,
)
from tests.db_fixtures import (
    BUCKET,
    S3,
    SOCKETS,
    aws_env,
    engine_where,
    full_backup,
    manifest_with_backup,
    no_aws_credentials,
    s3_tls,
)

__all__ = ["aws_env", "s3_tls"]  # fixtures used here


def _with_backup(m: Manifest, s3: S3, tmp_path: Path, **kw: object) -> Manifest:
    """The cutover manifest with the test S3's components.postgresql.backup."""
    backed = load_manifest(manifest_with_backup(tmp_path, s3, **kw))  # type: ignore[arg-type]
    return replace(m, components=replace(m.components,
                                         postgresql=backed.components.postgresql))


def _probes_left(s3: S3, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return [o["Key"] for o in listed.get("Contents", []) if "amibake-probe-" in o["Key"]]


@pytest.fixture
def archiving_new(pg_pair: tuple[Cluster, Cluster], s3_tls: S3, aws_env: None,
                  tmp_path: Path) -> Iterator[tuple[Manifest, Repo]]:
    """The backup manifest and its repository, the new cluster archiving into it."""
    manifest = load_manifest(manifest_with_backup(  # the S3 server is shared: a prefix each
        tmp_path, s3_tls, prefix=f"cutover-{tmp_path.name}"))
    new = pg_pair[1]
    with open_repo(manifest) as repo:
        settings = repo.postgresql_settings(new.data)
        with open(new.data / "postgresql.conf", "a") as fh:
            fh.write(f"unix_socket_directories = '{SOCKETS}'\n")
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())
        new.stop("fast")
        new.start()
        repo.pgbackrest("stanza-create", engine_where(new), action="create the stanza in")
        yield manifest, repo


def test_a_run_leaves_a_full_backup_taken_after_the_switch(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, archiving_new: tuple[Manifest, Repo], s3_tls: S3, tmp_path: Path,
) -> None:
    old, new = pg_pair
    manifest, repo = archiving_new
    full_backup(repo, new)  # the db role's first backup, before the cutover: not enough
    before = repo.info().backups
    assert len(before) == 1
    # what the db role's full-backup unit runs, here against the test cluster
    argv = [*pgbackrest.engine_args(manifest, config=str(repo.conf),
                                    include_dir=str(repo.workdir / "conf.d")),
            *engine_where(new), "--type=full", "backup"]
    command = "runuser -u postgres -- " + shlex.join(argv)
    m = cutover_manifest(old, new, knot, sites, strategy="dump", new_db_host="local",
                         backup_command=command)
    cfg = derive(replace(m, components=replace(m.components,
                                               postgresql=manifest.components.postgresql)))
    names = [s.name for s in forward_steps(cfg)]
    assert names.index("dns_switch") < names.index("backup_after_switch")

    state = run_cutover(cfg, provider_for(cfg), tmp_path / "s.json", say=print, start_now=True)

    assert state.complete
    assert knot.query(f"{SERVER_NAME}.")[0] == (NEW_ADDR,)
    switched = datetime.fromisoformat(state.facts.dns_switched_at or "")
    after = [b for b in repo.info().backups
             if b.type == "full" and b.start >= switched.replace(microsecond=0)]
    assert len(after) == 1 and after[0].label not in {b.label for b in before}
    assert after[0].label in (state.step("backup_after_switch").detail or "")
    assert "taken by" in (state.step("backup_after_switch").detail or "")
    assert _probes_left(s3_tls, repo.url.removeprefix(f"s3://{BUCKET}/")) == []


def test_no_backup_after_the_switch_and_no_host_is_one_line(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, archiving_new: tuple[Manifest, Repo], tmp_path: Path,
) -> None:
    from builder.cutover.backup_check import after_switch

    old, new = pg_pair
    manifest, repo = archiving_new
    full_backup(repo, new)
    m = cutover_manifest(old, new, knot, sites, strategy="dump")
    cfg = derive(replace(m, components=replace(m.components,
                                               postgresql=manifest.components.postgresql)))
    with pytest.raises(UserError) as info:
        after_switch(cfg, datetime.fromisoformat("2099-01-01T00:00:00+00:00"))
    assert "no full backup taken after the DNS switch" in str(info.value)
    assert repo.url in str(info.value)
    assert "\n" not in str(info.value)
    # the backup taken before counts when the switch was before it
    detail = after_switch(cfg, datetime.fromisoformat("2000-01-01T00:00:00+00:00"))
    assert repo.info().backups[0].label in detail


def test_a_writable_repository_passes_and_leaves_no_probe(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, s3_tls: S3, aws_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    cfg = derive(_with_backup(cutover_manifest(old, new, knot, sites, strategy="dump"),
                              s3_tls, tmp_path, prefix="preflight-ok"))
    check = repo_writable(cfg)
    assert check is not None and check.ok, check
    assert "s3://amibake-backups/preflight-ok" in check.detail
    assert _probes_left(s3_tls, "preflight-ok") == []
    assert repo_writable(derive(cutover_manifest(old, new, knot, sites))) is None


def _refused_before_anything_changed(
    cfg_manifest: Manifest, knot: Knot, sites: tuple[Site, Site], tmp_path: Path,
) -> UserError:
    cfg = derive(cfg_manifest)
    ttl_before = knot.query(f"{SERVER_NAME}.")
    path = tmp_path / "s.json"
    with pytest.raises(UserError) as info:
        run_cutover(cfg, provider_for(cfg), path, say=print, start_now=True)
    assert "pre-flight check failed: new db role's backup repository is writable" in str(
        info.value)
    assert "\n" not in str(info.value)
    assert knot.query(f"{SERVER_NAME}.") == ttl_before
    assert knot.query(f"{SERVER_NAME}.")[0] == (OLD_ADDR,)
    assert not sites[0].flag.exists()
    state = CutoverState.load(path) if path.exists() else None
    if state is not None:
        assert state.facts.old_address is None  # dns_lower_ttl never ran
    return info.value


def test_a_wrong_bucket_is_refused_in_preflight_with_nothing_changed(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, s3_tls: S3, aws_env: None, tmp_path: Path,
) -> None:
    old, new = pg_pair
    m = _with_backup(cutover_manifest(old, new, knot, sites, strategy="dump"), s3_tls,
                     tmp_path, prefix="nowhere", bucket="no-such-bucket")
    err = _refused_before_anything_changed(m, knot, sites, tmp_path)
    assert "s3://no-such-bucket/nowhere" in str(err)
    assert "bucket" in err.hint
    assert new.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'employees'") == [(0,)]


def test_missing_credentials_are_refused_in_preflight_with_nothing_changed(
    pg_pair: tuple[Cluster, Cluster], knot: Knot, sites: tuple[Site, Site],
    secret_env: None, s3_tls: S3, aws_env: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = pg_pair
    m = _with_backup(cutover_manifest(old, new, knot, sites, strategy="dump"), s3_tls,
                     tmp_path, prefix="denied")
    no_aws_credentials(monkeypatch, tmp_path / "none")
    err = _refused_before_anything_changed(m, knot, sites, tmp_path)
    assert "s3://amibake-backups/denied" in str(err)
    assert "credentials" in err.hint
