"""pytest fixtures for the AWS tests (loaded with `pytest_plugins`): moto-backed
`aws`, a `store` holding one sparse image, and the seed `manifest`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core.models import botocore_stubber

from builder.aws.clients import Clients
from builder.aws.retry import Retries
from builder.manifest import Manifest, load_manifest
from tests.aws_fixtures import AWS_ENV, ROOT, Aws, Recorder, make_stored_image


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        recorder = Recorder()
        session.events.register("provide-client-params", recorder.handler)
        sleeps: list[float] = []
        clients = Clients(session, home_region="us-east-1", retries=Retries(sleep=sleeps.append))
        aws = Aws(session, clients, recorder, sleeps=sleeps)
        session.events.unregister("before-send", botocore_stubber)  # aws.sends calls it
        aws.on_send("before-send", aws.sends.handler)
        yield aws


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_stored_image(root)
    return root


@pytest.fixture
def manifest() -> Manifest:
    return load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
