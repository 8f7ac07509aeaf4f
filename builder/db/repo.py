"""pgBackRest against the manifest's S3 repository, run from this machine.

`open_repo(manifest)` yields a `Repo`: a private scratch directory holding a
pgbackrest.conf rendered by config.py and, in a 0600 include file, the S3
credentials (boto3's chain) and the repository passphrase (the secret
store, or AMIBAKE_SECRET_<NAME>). Nothing secret goes on a command line or
into the environment. The directory is removed on the way out.

Every pgBackRest failure becomes one UserError line naming the repository,
with a hint for the usual causes (bucket, credentials, passphrase, damage).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder.atomic import write_atomically
from builder.errors import UserError
from builder.manifest.backup_model import Backup
from builder.manifest.model import Manifest
from builder.proc import run
from builder.render import pgbackrest as config
from builder.render.quoting import Unquotable

#: pgBackRest's `info` status codes that mean "nothing here yet"
EMPTY_STATUS = {1: "missing stanza path", 2: "no valid backups", 3: "missing stanza data"}
CIPHER_STATUS = 4


@dataclass(frozen=True)
class BackupInfo:
    """One backup set as `pgbackrest info` reports it."""

    label: str
    type: str
    start: datetime
    stop: datetime
    size: int
    repo_size: int
    wal_start: str
    wal_stop: str
    prior: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.type, "start": self.start.isoformat(),
                "stop": self.stop.isoformat(), "size": self.size, "repo_size": self.repo_size,
                "wal_start": self.wal_start, "wal_stop": self.wal_stop, "prior": self.prior}


@dataclass(frozen=True)
class RepoInfo:
    url: str
    stanza: str
    backups: tuple[BackupInfo, ...]
    wal_min: str | None
    wal_max: str | None


@dataclass
class Repo:
    manifest: Manifest
    backup: Backup
    workdir: Path
    conf: Path
    #: OS user pgBackRest and PostgreSQL run as (`postgres` when we are root)
    user: str | None

    @property
    def url(self) -> str:
        return config.repo_url(self.manifest, self.backup)

    @property
    def stanza(self) -> str:
        return config.stanza(self.manifest)

    def pgbackrest(self, command: str, args: Sequence[str] = (), *,
                   action: str, timeout: float | None = None) -> str:
        """Run one pgBackRest command; its stdout, or a one-line UserError."""
        argv = [*config.engine_args(self.manifest, config=str(self.conf),
                                    include_dir=str(self.workdir / "conf.d")), *args, command]
        proc = run(argv, check=False, capture=True, timeout=timeout,
                   user=self.user, group=self.user)
        if proc.returncode != 0:
            raise engine_error(self.url, action, proc.stderr + proc.stdout)
        return proc.stdout

    def postgresql_settings(self, pgdata: Path) -> dict[str, str]:
        """WAL archiving into this repository, for a cluster on this machine."""
        return config.postgresql_settings(self.manifest, config=str(self.conf),
                                          include_dir=str(self.workdir / "conf.d"),
                                          pg_path=str(pgdata))

    def restore_command(self, pgdata: Path) -> str:
        """Recovery's restore_command for a restore on this machine (this scratch config)."""
        return config.restore_command(self.manifest, config=str(self.conf),
                                      include_dir=str(self.workdir / "conf.d"),
                                      pg_path=str(pgdata))

    def info(self) -> RepoInfo:
        """The repository's backups and WAL range; a UserError when it cannot be read."""
        out = self.pgbackrest("info", ["--output=json"], action="list the backups in")
        try:
            doc = json.loads(out, strict=False)  # messages may hold control characters
            stanza = next(s for s in doc if s.get("name") == self.stanza)
        except (ValueError, StopIteration, AttributeError, TypeError):
            raise UserError(f"{self.url}: pgBackRest's info for stanza {self.stanza} "
                            "could not be read", hint="run with --debug") from None
        return _parse_info(self.url, stanza)


def _parse_info(url: str, stanza: dict[str, Any]) -> RepoInfo:
    status = stanza.get("status", {})
    code, message = int(status.get("code", 99)), str(status.get("message", ""))
    if code == CIPHER_STATUS or any(
            r.get("status", {}).get("code") == CIPHER_STATUS for r in stanza.get("repo", [])):
        raise UserError(f"{url}: {first_line(message)}", hint=HINTS["cipher"])
    if code not in (0, *EMPTY_STATUS):
        detail = " ".join(str(r.get("status", {}).get("message", ""))
                          for r in stanza.get("repo", []))
        raise engine_error(url, "list the backups in", detail or message)
    backups = tuple(
        BackupInfo(
            label=b["label"], type=b["type"],
            start=_time(b["timestamp"]["start"]), stop=_time(b["timestamp"]["stop"]),
            size=int(b["info"]["size"]), repo_size=int(b["info"]["repository"]["size"]),
            wal_start=b["archive"]["start"], wal_stop=b["archive"]["stop"],
            prior=b.get("prior"),
        )
        for b in stanza.get("backup", []) if not b.get("error")
    )
    archive = [a for a in stanza.get("archive", []) if a.get("min")]
    return RepoInfo(url, str(stanza.get("name")), backups,
                    archive[0]["min"] if archive else None,
                    archive[-1]["max"] if archive else None)


def _time(epoch: int) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


#: hint per kind of failure, recognised by words in pgBackRest's message
HINTS = {
    "bucket": "check components.postgresql.backup.repository.bucket and region",
    "credentials": "check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) and that "
                   "they may read the bucket prefix",
    "cipher": "the repository passphrase does not match the one the repository was made with "
              "(or its info files are damaged); check repository.cipher_passphrase (or its "
              "AMIBAKE_SECRET_<NAME> override)",
    "damage": "the repository holds a damaged file; `pgbackrest verify` on the instance "
              "lists them; restore an earlier backup with --to LABEL",
    "connect": "check repository.endpoint / region and that the endpoint answers HTTPS",
    "other": "run with --debug to see pgBackRest's full output",
}
_PATTERNS = (
    ("bucket", r"NoSuchBucket|bucket does not exist|\b404\b.*bucket"),
    ("credentials", r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|\b403\b"),
    # a wrong passphrase decrypts the repository's info files to noise
    ("cipher", r"unable to load info file|passphrase|cipher"),
    ("damage", r"CryptoError|checksum|invalid|corrupt|unexpected eof|unable to (read|open)"),
    ("connect", r"unable to connect|Name or service not known|TLS error|timeout"),
)


def first_line(text: str) -> str:
    """pgBackRest's first ERROR message (without its code), or the first line;
    only printable characters (a wrong passphrase decrypts to noise), at most 300."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = next((m.group(1) for ln in lines if (m := re.search(r"ERROR: \[\d+\]: (.*)", ln))),
                 lines[0] if lines else "no message")
    clean = "".join(c if c.isprintable() else "?" for c in found).strip()
    return clean if len(clean) <= 300 else clean[:297] + "..."


def engine_error(url: str, action: str, output: str) -> UserError:
    message = first_line(output)
    kind = next((k for k, pattern in _PATTERNS if re.search(pattern, output, re.I)), "other")
    return UserError(f"pgBackRest could not {action} {url}: {message}", hint=HINTS[kind])


def _credentials() -> tuple[str, str, str]:
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is None:
        raise UserError("no AWS credentials to read the backup repository with",
                        hint=HINTS["credentials"])
    frozen = creds.get_frozen_credentials()
    return frozen.access_key or "", frozen.secret_key or "", frozen.token or ""


def _passphrase(manifest: Manifest, backup: Backup) -> str:
    ref = backup.repository.cipher_passphrase
    if ref is None:
        return ""
    import boto3

    from builder.secret_values import resolve_secret

    region = backup.repository.region
    return resolve_secret(ref, ssm=boto3.client("ssm", region_name=region),
                          secretsmanager=boto3.client("secretsmanager", region_name=region))


def run_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it (and pgBackRest) as postgres."""
    return config.OS_USER if os.geteuid() == 0 else None


def own(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, user)


@contextmanager
def open_repo(manifest: Manifest) -> Iterator[Repo]:
    """The manifest's repository with credentials in a private scratch directory."""
    backup = config.backup_of(manifest)
    if backup is None:
        raise UserError(f"{manifest.source}: the manifest has no components.postgresql.backup "
                        "section", hint="add one: `amibake schema` lists its settings")
    key, secret, token = _credentials()
    passphrase = _passphrase(manifest, backup)
    user = run_user()
    workdir = Path(tempfile.mkdtemp(prefix="amibake-db-"))
    try:
        own(workdir, user)
        for sub in ("conf.d", "log", "spool", "lock"):
            (workdir / sub).mkdir()
            own(workdir / sub, user)
        conf = workdir / "pgbackrest.conf"
        instance = config.Instance(log_path=str(workdir / "log"),
                                   spool_path=str(workdir / "spool"),
                                   lock_path=str(workdir / "lock"), key_type="shared")
        write_atomically(conf, config.pgbackrest_conf(manifest, instance=instance), mode=0o644)
        secrets = [("repo1-s3-key", key), ("repo1-s3-key-secret", secret),
                   ("repo1-s3-token", token), ("repo1-cipher-pass", passphrase)]
        try:
            text = "[global]\n" + "".join(f"{k}={config.ini_value(v)}\n"
                                          for k, v in secrets if v)
        except Unquotable:
            raise UserError("a credential or the passphrase holds a line break or surrounding "
                            "blanks; pgbackrest.conf cannot hold it",
                            hint="strip the secret's value in its store") from None
        write_atomically(workdir / "conf.d" / "secrets.conf", text, mode=0o600)
        for path in (conf, workdir / "conf.d" / "secrets.conf"):
            own(path, user)
        yield Repo(manifest, backup, workdir, conf, user)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
