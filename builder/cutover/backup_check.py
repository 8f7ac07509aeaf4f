"""The new db role's backup repository around the cutover (issue 11 part 4).

Pre-flight (`repo_writable`) proves the repository of the manifest's
`components.postgresql.backup` writable before anything changes: a probe
object is written under the repository prefix, read back and deleted (S3
through boto3, the credentials pgBackRest is given by builder/db/repo.py),
then pgBackRest itself lists the repository (endpoint, CA, passphrase).

After the DNS switch (`after_switch`) a full backup taken after the switch
must be in the repository: the one already there, or one taken by
`cutover.backup_command` on `cutover.new_db_host`.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime
from typing import Any

from builder.cutover import remote
from builder.cutover.config import CutoverConfig
from builder.cutover.preflight import Check
from builder.db.repo import HINTS, BackupInfo, first_line, open_repo
from builder.errors import UserError
from builder.manifest.backup_model import Backup
from builder.manifest.model import Manifest
from builder.proc import CommandError
from builder.render import pgbackrest

#: a full backup of a big database takes a while; the command is bounded anyway
BACKUP_TIMEOUT = 6 * 3600
CHECK_NAME = "new db role's backup repository is writable"


def _s3(backup: Backup) -> Any:
    import boto3
    from botocore.config import Config

    repo = backup.repository
    kw: dict[str, Any] = {"region_name": repo.region}
    if repo.endpoint:  # pgBackRest uses path-style URIs there too
        kw["endpoint_url"] = f"https://{repo.endpoint}"
        kw["config"] = Config(s3={"addressing_style": "path"})
    if repo.ca_file:
        kw["verify"] = repo.ca_file
    # a fresh session: boto3's default one keeps the credentials it found first
    return boto3.Session().client("s3", **kw)


def probe(manifest: Manifest, backup: Backup) -> str:
    """Write, read back and delete a probe object under the repository prefix;
    a one-line UserError naming the bucket/prefix when any of it fails."""
    from botocore.exceptions import BotoCoreError, ClientError

    repo = backup.repository
    url = pgbackrest.repo_url(manifest, backup)
    key = pgbackrest.repo_path(manifest, backup).lstrip("/") + \
        f"/amibake-probe-{secrets.token_hex(8)}"
    body = secrets.token_bytes(32)
    extra = ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": repo.kms_key_id}
             if repo.kms_key_id else {})
    written = False
    try:
        s3 = _s3(backup)
        s3.put_object(Bucket=repo.bucket, Key=key, Body=body, **extra)
        written = True
        back = s3.get_object(Bucket=repo.bucket, Key=key)["Body"].read()
        s3.delete_object(Bucket=repo.bucket, Key=key)
        written = False
    except (BotoCoreError, ClientError) as exc:
        text = str(exc)
        kind = ("bucket" if "NoSuchBucket" in text else
                "connect" if "Could not connect" in text or "SSL" in text else "credentials")
        raise UserError(f"backup repository {url} is not writable: {first_line(text)}",
                        hint=HINTS[kind]) from None
    finally:
        if written:  # read failed after the write: leave nothing behind
            with contextlib.suppress(BotoCoreError, ClientError):
                s3.delete_object(Bucket=repo.bucket, Key=key)
    if back != body:
        raise UserError(f"backup repository {url}: the probe object read back differs "
                        "from what was written", hint=HINTS["connect"])
    return f"{url}: probe object written, read back and deleted"


def repo_writable(cfg: CutoverConfig) -> Check | None:
    """The pre-flight check, or None when the manifest has no backup section."""
    backup = pgbackrest.backup_of(cfg.manifest)
    if backup is None:
        return None
    try:
        detail = probe(cfg.manifest, backup)
        with open_repo(cfg.manifest) as repo:
            count = len(repo.info().backups)
    except UserError as exc:
        return Check(CHECK_NAME, False, str(exc), exc.hint)
    return Check(CHECK_NAME, True, f"{detail}; pgBackRest lists {count} backup(s)")


def _full_after(backups: tuple[BackupInfo, ...], since: datetime) -> BackupInfo | None:
    # pgBackRest keeps whole seconds: a backup started in the switch's second counts
    floor = since.replace(microsecond=0)
    fulls = [b for b in backups if b.type == "full" and b.start >= floor]
    return max(fulls, key=lambda b: b.start) if fulls else None


def after_switch(cfg: CutoverConfig, switched_at: datetime) -> str:
    """A full backup taken after the switch is in the repository (taking one
    on new_db_host when there is none yet); a one-line UserError otherwise."""
    cut = cfg.cutover
    with open_repo(cfg.manifest) as repo:
        found = _full_after(repo.info().backups, switched_at)
        ran = ""
        if found is None and cut.new_db_host:
            try:
                remote.command(cut.new_db_host, cut.new_db_host_ssh_options, cut.backup_command,
                               setting="new_db_host", timeout=BACKUP_TIMEOUT)
            except CommandError as err:
                raise UserError(
                    f"full backup on {cut.new_db_host.removeprefix('ssh:')} failed: "
                    f"{err.message}",
                    hint="check cutover.backup_command, SSH access (cutover.new_db_host) "
                         "and `journalctl -u amibake-backup-full` there") from err
            found = _full_after(repo.info().backups, switched_at)
            ran = f" (taken by `{cut.backup_command}`)"
        if found is None:
            raise UserError(
                f"no full backup taken after the DNS switch ({switched_at.isoformat()}) in "
                f"{repo.url}",
                hint="take one on the new db server (sudo systemctl start "
                     "amibake-backup-full.service), or set cutover.new_db_host so the "
                     "cutover does; then run again")
        return (f"full backup {found.label} in {repo.url}, started "
                f"{found.start.isoformat()}{ran}")
