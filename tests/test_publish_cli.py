"""`amibake publish/prune/gc/deprecate` through the CLI against moto's HTTP
server (a real endpoint, --endpoint-url), and the no-credentials path."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from builder.cli import main
from builder.output import Output
from builder.publish.progress import Progress
from tests.aws_fixtures import AWS_ENV, ROOT, make_stored_image

MANIFEST = str(ROOT / "manifests" / "smallpayroll.yaml")


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured
    return json.loads(captured.out)


def test_publish_prune_gc_over_http(endpoint: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "images"
    make_stored_image(store)
    common = ["--images", str(store), "--endpoint-url", endpoint]
    plan = run_json(capsys, "publish", MANIFEST, *common, "--dry-run")
    assert plan["published"] is False and any("upload-snapshot" in p for p in plan["actions"])
    doc = run_json(capsys, "publish", MANIFEST, *common, "--concurrency", "4")
    assert set(doc["images"]) == {"us-east-1", "eu-west-1"}
    assert doc["upload"]["blocks_sent"] == doc["upload"]["blocks"] == 8
    again = run_json(capsys, "publish", MANIFEST, *common)
    assert again["existing"] is True and again["images"] == doc["images"]
    region_args = ["--manifest", MANIFEST, "--endpoint-url", endpoint]
    pruned = run_json(capsys, "amis", "prune", "smallpayroll", "--keep", "1", *region_args)
    assert all(a["verb"] == "keep" for a in pruned["actions"])
    swept = run_json(capsys, "amis", "gc", "--min-age", "0", *region_args)
    assert swept["actions"] == []


def test_conflicting_publish_is_one_line_error(endpoint: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "images"
    make_stored_image(store)
    assert main(["publish", MANIFEST, "--images", str(store), "--endpoint-url", endpoint]) == 0
    other = tmp_path / "other"
    make_stored_image(other, seed=42)
    capsys.readouterr()
    assert main(["publish", MANIFEST, "--images", str(other), "--endpoint-url", endpoint]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("amibake: error:")]
    assert len(errors) == 1 and errors[0] == err[-1]
    assert "different disk" in errors[0] and "bump" in errors[0]


def test_no_credentials_keeps_the_image_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    store = tmp_path / "images"
    make_stored_image(store)
    assert main(["publish", MANIFEST, "--images", str(store)]) == 0
    captured = capsys.readouterr()
    assert "no AWS credentials configured" in captured.err
    assert "local store only" in captured.err
    assert "not published" in captured.out


def test_progress_bar_shows_rate_and_eta_on_a_terminal_only() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    tty = Tty()
    bar = Progress(Output(stderr=tty), 4 * 1024 * 1024, "upload", clock=lambda: now[0])
    now[0] = 2.0
    bar.advance(1024 * 1024)
    assert "25.0%" in tty.getvalue() and "512.0 KiB/s" in tty.getvalue()
    assert "ETA 0:00:06" in tty.getvalue()
    quiet = Tty()
    silent = Progress(Output(json_mode=True, stderr=quiet), 10, "upload")
    silent.advance(5)
    silent.finish()
    assert quiet.getvalue() == ""


def test_bake_target_aws_calls_publish_like_this(endpoint: str, tmp_path: Path) -> None:
    """The call `amibake bake --target aws` makes (builder/commands/bake.py)."""
    import argparse

    from builder.commands import publish as publish_command

    store = tmp_path / "images"
    make_stored_image(store)
    args = argparse.Namespace(
        manifest=MANIFEST, image_version="1.0.0", images=store, dry_run=False,
        concurrency=8, profile=None, region=None, endpoint_url=endpoint)
    captured = io.StringIO()
    assert publish_command.run(args, Output(json_mode=True, stdout=captured)) == 0
    doc = json.loads(captured.getvalue())
    assert doc["published"] is True and doc["images"]["us-east-1"].startswith("ami-")
