"""S3 for pgBackRest in tests: moto's S3 served over HTTPS on loopback with a
certificate from a throw-away CA (pgBackRest speaks S3 only over TLS), and
a manifest whose backup section points at it.

The server is moto's own WSGI app in werkzeug's threaded server; the one
change is that each TLS connection is closed with a close_notify (werkzeug
just drops the socket, which OpenSSL 3 clients such as pgBackRest report as
"unexpected eof while reading").
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from builder.db.repo import Repo
from builder.ports import free_port
from builder.proc import run
from tests.bake_fixture import seed_text
from tests.cutover_fixtures import Cluster, destroy_cluster, start_cluster

ROOT = Path(__file__).resolve().parent.parent
SMALLPAYROLL = ROOT / "manifests" / "smallpayroll.yaml"
PASSPHRASE_REF = "/smallpayroll/backup-passphrase"
PASSPHRASE_ENV = "AMIBAKE_SECRET_SMALLPAYROLL_BACKUP_PASSPHRASE"
BUCKET = "amibake-backups"


@dataclass
class S3:
    endpoint: str  # host:port
    ca_file: Path

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=f"https://{self.endpoint}",
                            verify=str(self.ca_file), region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


def _certificate(directory: Path, extra_ip: str = "") -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    # pgBackRest matches the host against DNS names only: an address is named both ways
    san = "DNS:localhost,IP:127.0.0.1" + (f",IP:{extra_ip},DNS:{extra_ip}" if extra_ip else "")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", f"subjectAltName={san}"], capture=True)
    cert.chmod(0o644)
    return cert, key


@contextmanager
def serve_s3_tls(extra_ip: str = "") -> Iterator[S3]:
    """moto's S3 over HTTPS on a free loopback port, with the bucket BUCKET (its
    certificate also names `extra_ip`: the address a VM reaches it at)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # one TLS handshake per connection, not per request

    class Server(ThreadedWSGIServer):
        def shutdown_request(self, request: Any) -> None:
            with contextlib.suppress(OSError, ValueError):
                request.unwrap()  # send close_notify
            super().shutdown_request(request)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    directory = Path(tempfile.mkdtemp(prefix="amibake-s3-"))
    directory.chmod(0o755)
    cert, key = _certificate(directory, extra_ip)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    port = free_port()
    server = Server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app),
                    handler=KeepAlive, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        s3 = S3(f"localhost:{port}", cert)
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_tls() -> Iterator[S3]:
    with serve_s3_tls() as s3:
        yield s3


def backup_yaml(s3: S3, *, prefix: str, bucket: str = BUCKET, encrypted: bool = True,
                restore_on_boot: str = "latest", archive_timeout: int = 60) -> str:
    lines = [
        "    backup:",
        "      repository:",
        f"        bucket: {bucket}",
        f"        prefix: {prefix}",
        f"        endpoint: \"{s3.endpoint}\"",
        f"        ca_file: {s3.ca_file}",
    ]
    if encrypted:
        lines.append(f"        cipher_passphrase: {{ssm: {PASSPHRASE_REF}}}")
    lines += [f"      archive_timeout: {archive_timeout}", "      process_max: 2",
              f"      restore_on_boot: \"{restore_on_boot}\""]
    return "\n".join(lines) + "\n"


def manifest_with_backup(directory: Path, s3: S3, name: str = "backup.yaml",
                         **kw: Any) -> Path:
    """smallpayroll.yaml with a backup section pointing at the test S3."""
    text = seed_text()  # its app (the Rails sample) by absolute path
    anchor = '      log_min_duration_statement: "500"\n'
    assert anchor in text
    path = directory / name
    path.write_text(text.replace(anchor, anchor + backup_yaml(s3, **kw), 1))
    return path


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials moto accepts, and the repository passphrase for local runs."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")


def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, empty: Path) -> None:
    """No AWS credentials anywhere boto3 or pgBackRest looks (`empty`: a missing file)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


#: where the test clusters' sockets are, for pgBackRest (it connects by socket)
SOCKETS = "/tmp"


def engine_where(cluster: Cluster) -> list[str]:
    """pgBackRest's options for a cluster started by cutover_fixtures."""
    return [f"--pg1-path={cluster.data}", f"--pg1-port={cluster.port}",
            f"--pg1-socket-path={SOCKETS}"]


def archiving_cluster(stack: ExitStack, repo: Repo, template: Path, name: str) -> Cluster:
    """A cluster archiving its WAL into `repo`, the stanza created; destroyed by `stack`."""
    cluster = start_cluster(template, name, (f"unix_socket_directories = '{SOCKETS}'",))
    stack.callback(destroy_cluster, cluster)
    with open(cluster.data / "postgresql.conf", "a") as fh:
        fh.writelines(f"{k} = {v}\n" for k, v in repo.postgresql_settings(cluster.data).items())
    cluster.stop("fast")
    cluster.start()
    repo.pgbackrest("stanza-create", engine_where(cluster), action="create the stanza in")
    return cluster


def full_backup(repo: Repo, cluster: Cluster) -> None:
    repo.pgbackrest("backup", [*engine_where(cluster), "--type=full"], action="back up into")
