"""Fixtures for the AWS tests (publish, life cycle, launch): a stored image
with a sparse disk, moto-backed clients and a recorder of the requests
boto3 sends (moto drops many fields, so tests assert the requests too)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from moto.core.botocore_stubber import MockRawResponse
from moto.core.models import botocore_stubber

from builder.aws.clients import Clients
from builder.disk_digest import file_digest
from builder.output import Output
from builder.publish.snapshot_upload import BLOCK_SIZE

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

#: block index → what the fixture disk holds there
DATA_BLOCKS = (0, 1, 2, 7, 40, 41, 99)  # random bytes
PARTIAL_BLOCK = 60  # a few bytes in the middle of the block, zeros around
ZERO_DATA_BLOCKS = (20, 21, 80)  # allocated (written) but all zeros
DISK_BLOCKS = 128  # 64 MiB apparent


def write_sparse_disk(path: Path, *, blocks: int = DISK_BLOCKS, seed: int = 7,
                      data_blocks: tuple[int, ...] = DATA_BLOCKS) -> set[int]:
    """A sparse disk: holes, random data blocks, written-zero blocks. Returns non-zero blocks."""
    import random

    rng = random.Random(seed)
    with path.open("wb") as fh:
        fh.truncate(blocks * BLOCK_SIZE)
        for index in data_blocks:
            fh.seek(index * BLOCK_SIZE)
            fh.write(rng.randbytes(BLOCK_SIZE))
        fh.seek(PARTIAL_BLOCK * BLOCK_SIZE + 4096 + 17)
        fh.write(b"amibake partial block")
        for index in ZERO_DATA_BLOCKS:
            fh.seek(index * BLOCK_SIZE)
            fh.write(bytes(BLOCK_SIZE))
    return {*data_blocks, PARTIAL_BLOCK}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def make_stored_image(store: Path, name: str = "smallpayroll", version: str = "1.0.0",
                      *, seed: int = 7, blocks: int = DISK_BLOCKS, legacy: bool = False) -> Path:
    """images/<name>/<version>/ with disk.raw and image.json (CONTRACTS.md);
    `legacy`: the disk's digest as image.json had it before the block digest
    (`sha256: <hex>`)."""
    image_dir = store / name / version
    image_dir.mkdir(parents=True)
    disk = image_dir / "disk.raw"
    write_sparse_disk(disk, blocks=blocks, seed=seed)
    digest = sha256_file(disk)
    recorded = {"sha256": digest} if legacy else {"digest": file_digest(disk)}
    doc = {
        "id": "img-" + digest[:12], "name": name, "version": version,
        "roles": ["web", "app", "db", "all-in-one"], "architecture": "x86_64",
        "boot_mode": "uefi-preferred", "volume_size_gib": 4,
        "inputs": {"manifest": "sha256:" + "1" * 64},
        "inputs_digest": "sha256:" + hashlib.sha256(name.encode() + version.encode()).hexdigest(),
        "disk": {"file": "disk.raw", **recorded, "apparent_size": disk.stat().st_size,
                 "used_size": os.stat(disk).st_blocks * 512},
        "packages": {"nginx-light": "1.22.1-9"}, "build_time": "2026-11-25T12:00:00Z",
        "builder_version": "0.1.0", "boot_test": {"ok": True},
    }
    (image_dir / "image.json").write_text(json.dumps(doc, indent=2))
    return image_dir


@dataclass
class Call:
    service: str
    operation: str
    params: dict[str, Any]


@dataclass
class Recorder:
    """Every API call boto3 makes (parameters as the caller passed them)."""

    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, params: dict[str, Any], model: Any, context: dict[str, Any],
                **_: Any) -> None:
        service = model.service_model.service_name
        context["amibake_params"] = params
        with self.lock:
            self.calls.append(Call(service, model.name, copy.copy(params)))

    def of(self, operation: str, *, dry_run: bool = False) -> list[Call]:
        """Calls of `operation` (DryRun=True calls only when `dry_run`)."""
        with self.lock:
            return [c for c in self.calls if c.operation == operation
                    and bool(c.params.get("DryRun")) == dry_run]

    def operations(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(c.service, c.operation) for c in self.calls}

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()


def fake_response(parsed: dict[str, Any], status: int = 200) -> tuple[AWSResponse, dict[str, Any]]:
    """A before-call answer: botocore uses it instead of sending the request."""
    parsed = dict(parsed)
    parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": status})
    return AWSResponse("https://fake", status, {}, None), parsed


def http_error(service: str, code: str, status: int = 400) -> AWSResponse:
    """An error answer as AWS would send it over HTTP (a `before-send` answer:
    botocore parses it and the retry policy sees it, as with a real one)."""
    if service in ("ebs", "ssm", "sts-json"):
        body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
        headers = {"x-amzn-ErrorType": code, "Content-Type": "application/json"}
    elif service == "s3":
        body = (f"<Error><Code>{code}</Code><Message>injected {code}</Message>"
                "</Error>").encode()
        headers = {"Content-Type": "application/xml"}
    else:  # ec2 query protocol
        body = (f"<Response><Errors><Error><Code>{code}</Code><Message>injected {code}"
                "</Message></Error></Errors><RequestID>r-1</RequestID></Response>").encode()
        headers = {"Content-Type": "text/xml"}
    return AWSResponse("https://injected", status, headers, MockRawResponse(body))


@dataclass
class Sends:
    """The HTTP requests botocore sends (every attempt, retries included).
    It stands in front of moto: `fail` may answer a request instead, and then
    moto never sees it (as AWS never acts on a request it throttled)."""

    requests: list[tuple[str, AWSPreparedRequest]] = field(default_factory=list)
    fail: Callable[[str, AWSPreparedRequest], AWSResponse | None] = lambda _op, _r: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, request: AWSPreparedRequest, event_name: str, **_: Any
                ) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        with self.lock:
            self.requests.append((operation, request))
        answer = self.fail(operation, request)
        if answer is not None:
            return answer
        return botocore_stubber(event_name=event_name, request=request)  # type: ignore[no-any-return]

    def of(self, operation: str) -> list[AWSPreparedRequest]:
        with self.lock:
            return [r for op, r in self.requests if op == operation]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


def block_index(request: AWSPreparedRequest) -> int:
    """The block of an EBS PutSnapshotBlock request (…/blocks/<index>)."""
    return int(str(request.url).split("?")[0].rstrip("/").rsplit("/", 1)[-1])


def is_dry_run(context: dict[str, Any]) -> bool:
    return bool(context.get("amibake_params", {}).get("DryRun"))


def error_response(code: str, status: int = 400) -> tuple[AWSResponse, dict[str, Any]]:
    return fake_response({"Error": {"Code": code, "Message": f"injected {code}"},
                          "ResponseMetadata": {"HTTPStatusCode": status}}, status)


@dataclass
class Aws:
    """moto-backed clients plus the request recorder and hook helpers."""

    session: boto3.Session
    clients: Clients
    recorder: Recorder
    sends: Sends = field(default_factory=Sends)
    #: what the retry policy slept (the fake clock: nothing really waits)
    sleeps: list[float] = field(default_factory=list)

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        """Register a botocore hook for every client (made before or after)."""
        self.session.events.register(event, handler)
        for client in self.clients._cache.values():
            client.meta.events.register(event, handler)

    def on_send(self, event: str, handler: Callable[..., Any]) -> None:
        """A `before-send` hook that runs before moto answers (every client)."""
        self.session.events.register_first(event, handler)
        for client in self.clients._cache.values():
            client.meta.events.register_first(event, handler)

    def own_snapshots(self, region: str) -> list[str]:
        snaps = self.clients.ec2(region).describe_snapshots(OwnerIds=["self"])["Snapshots"]
        return sorted(s["SnapshotId"] for s in snaps)

    def own_images(self, region: str) -> list[str]:
        images = self.clients.ec2(region).describe_images(Owners=["self"])["Images"]
        return sorted(i["ImageId"] for i in images)


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}


def quiet() -> Output:
    import io

    return Output(json_mode=False, stdout=io.StringIO(), stderr=io.StringIO())
