"""`amibake imds serve`: serves until Ctrl-C, prints its URL (JSON with --json)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from builder.cli import main
from tests.sigint import default_sigint

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOOOJQ7DzLFEXWFN+g+1k5bcJLiEuwCv1LdbA9Eo/x/z "
       "admin@example")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _read_json(stream: IO[str]) -> dict[str, Any]:
    text = ""
    while True:
        line = stream.readline()
        assert line, f"amibake exited before printing its URL: {text!r}"
        text += line
        try:
            doc: dict[str, Any] = json.loads(text)
            return doc
        except ValueError:
            continue


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    try:
        with OPENER.open(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _token(url: str) -> str:
    request = urllib.request.Request(f"{url}/latest/api/token", method="PUT", data=b"",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with OPENER.open(request, timeout=5) as resp:
        return str(resp.read().decode())


def _serve(*args: str, stdin: str | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "imds", "serve", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
        preexec_fn=default_sigint,  # the tests stop it with SIGINT
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    return proc


@contextlib.contextmanager
def _serving(*args: str, stdin: str | None = None,
             ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`imds serve` in text mode: the process and the URL it printed; killed at the end."""
    proc = _serve(*args, stdin=stdin)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line
        yield proc, line.split(" at ")[1].split()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ssm_value(url: str, name: str) -> str:
    import boto3

    from builder.imds import ImdsConfig

    creds = ImdsConfig().credentials
    ssm = boto3.client(  # type: ignore[call-overload]
        "ssm", endpoint_url=url, region_name=ImdsConfig().region,
        aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.token)
    return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_url_and_stops_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\n# amibake-role: db\n")
    key = tmp_path / "id.pub"
    key.write_text(KEY + "\n")
    secrets = tmp_path / "secrets"
    secrets.touch(mode=0o600)
    secrets.write_text("# the app's\n/app/pw=hunter2=x\n\n")
    proc = _serve("--json", "--role", "web", "--tag", "Name=web-1", "--user-data",
                  str(user_data), "--public-key", str(key), "--secrets-file", str(secrets),
                  "--instance-id", "i-0cli")
    try:
        assert proc.stdout is not None
        doc = _read_json(proc.stdout)
        url = doc["url"]
        assert url.startswith("http://127.0.0.1:")
        assert doc["instance_id"] == "i-0cli" and doc["require_token"] is True
        assert doc["tags"] == {"Name": "web-1", "Role": "web"}
        assert _get(f"{url}/latest/meta-data/instance-id")[0] == 401
        tok = _token(url)
        assert _get(f"{url}/latest/meta-data/instance-id", tok) == (200, "i-0cli")
        assert _get(f"{url}/latest/meta-data/tags/instance/Role", tok) == (200, "web")
        assert _get(f"{url}/latest/user-data", tok) == (200, "#cloud-config\n# amibake-role: db\n")
        assert _get(f"{url}/latest/meta-data/public-keys/0/openssh-key", tok) == (200, KEY)
        assert _ssm_value(url, "/app/pw") == "hunter2=x"
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_optional_tokens_text_output() -> None:
    proc = _serve("--optional-token")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("IMDS for i-0123456789abcdef0 at http://127.0.0.1:")
        url = line.split(" at ")[1].split()[0]
        assert _get(f"{url}/latest/meta-data/instance-id") == (200, "i-0123456789abcdef0")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_tag_is_a_one_line_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imds", "serve", "--tag", "nonsense"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["amibake: error: --tag expects KEY=VALUE, got 'nonsense' "
                   "(hint: e.g. --tag Name=web-1)"]


def test_missing_user_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["imds", "serve", "--json", "--user-data", str(tmp_path / "nope")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["error"].startswith("cannot read user-data ")


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["imds", "serve", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_secrets_from_stdin_never_in_argv() -> None:
    with _serving("--secrets-stdin", stdin="/db/password=s3cret\n") as (proc, url):
        assert b"s3cret" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert _ssm_value(url, "/db/password") == "s3cret"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_secret_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imds", "serve", "--secret", "/app/pw=hunter2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--secret is not accepted" in err[0]
    assert "--secrets-file" in err[0] and "hunter2" not in err[0]


def test_secrets_file_readable_by_others_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text("/app/pw=hunter2\n")
    secrets.chmod(0o644)
    assert main(["imds", "serve", "--secrets-file", str(secrets)]) == 1
    err = capsys.readouterr().err
    assert "may be read by others (mode 0644)" in err and "chmod 600" in err
    assert "hunter2" not in err


def test_bad_secrets_lines_are_named_without_their_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secrets = tmp_path / "secrets"
    secrets.touch(mode=0o600)
    secrets.write_text("ok=1\nno equals sign hunter2\nok=2\n")
    assert main(["imds", "serve", "--secrets-file", str(secrets)]) == 1
    err = capsys.readouterr().err
    assert f"{secrets}:2:1: expected NAME=VALUE" in err
    assert f"{secrets}:3:1: secret ok is given twice" in err
    assert "hunter2" not in err


PRIVATE = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
-----END OPENSSH PRIVATE KEY-----
"""


@pytest.mark.parametrize(("content", "says"), [
    (PRIVATE, "this is a private key"),
    ("", "found 0 lines"),
    (KEY + "\n" + KEY + "\n", "found 2 lines"),
    ("ssh-ed25519 not-base64! x", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmibakeTestKey admin@example", "not valid base64"),
    ("ssh-rsa " + KEY.split()[1], "does not hold a ssh-rsa public key"),
    ('command="sh" ' + KEY, "not an OpenSSH public key"),
    ("\xff\xfe", "not an OpenSSH public key"),
])
def test_public_key_that_is_not_one_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str) -> None:
    key = tmp_path / "key"
    key.write_bytes(content.encode("latin-1"))
    assert main(["imds", "serve", "--public-key", str(key)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert "b3BlbnNzaC1rZXkt" not in err[0]  # never quotes the key material


@pytest.mark.parametrize("port", ["99999", "-1", "٨٠", "http"])
def test_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                            port: str) -> None:
    assert main(["imds", "serve", "--port", port]) == 2
    err = capsys.readouterr().err
    assert "not a TCP port" in err and "Traceback" not in err


@pytest.mark.parametrize("round_", range(3))
def test_ctrl_c_right_after_the_url_is_a_clean_stop(round_: int) -> None:
    """SIGINT as soon as the URL line is out (before any request): the
    handler is in place before the line is printed, so this is a clean stop
    (0 and "IMDS stopped"), never a KeyboardInterrupt outside the wait (130)."""
    proc = _serve("--optional-token")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("IMDS for ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and "IMDS stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
