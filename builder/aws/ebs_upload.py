"""Upload a sparse raw disk to an EBS snapshot with the EBS direct APIs.

- 512 KiB blocks; all-zero blocks are never sent. Candidate blocks come from
  the file's data extents (SEEK_DATA/SEEK_HOLE), then a content check drops
  extents that hold only zeros.
- Each block carries its base64 SHA-256; CompleteSnapshot gets the changed
  block count and the aggregate checksum: SHA-256 of the concatenated binary
  per-block digests in block-index order, base64, algorithm SHA256,
  aggregation LINEAR (as the EBS direct API documents).
- Bounded concurrency (a thread pool), retries with exponential backoff and
  full jitter on throttling, 5xx and connection errors.
- StartSnapshot with a Timeout so an abandoned upload expires, tags, optional
  KMS encryption.
- Resumable: `<disk>.ebs-upload.json` next to the image holds the snapshot id
  and the acknowledged block indexes; on resume they are reconciled with
  ListSnapshotBlocks and never sent again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from builder.errors import UserError
from builder.sparse import data_extents
from builder.wait import NotYet, Waiter, wait_for

log = logging.getLogger("amibake.ebs")

BLOCK_SIZE = 512 * 1024
GIB = 1024**3
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException", "Throttling", "RequestThrottled", "RequestLimitExceeded",
        "TooManyRequestsException", "SlowDown", "InternalServerException",
        "InternalError", "ServiceUnavailable", "ServiceUnavailableException",
        "RequestTimeout", "RequestTimeoutException",
    }
)


@dataclass(frozen=True)
class UploadOptions:
    concurrency: int = 8
    max_attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 20.0
    timeout_minutes: int = 60 * 24
    kms_key_arn: str | None = None
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    wait: Waiter = Waiter("the snapshot to complete", attempts=360, interval=5.0)


@dataclass(frozen=True)
class UploadResult:
    snapshot_id: str
    volume_size_gib: int
    blocks_total: int  # non-zero blocks in the disk
    blocks_sent: int  # PutSnapshotBlock calls that succeeded in this run
    blocks_resumed: int  # acknowledged before this run, not sent again
    bytes_sent: int
    retries: int
    aggregate_checksum: str
    seconds: float


def candidate_blocks(path: Path, block_size: int = BLOCK_SIZE) -> list[int]:
    """Indexes of blocks touched by a data extent (may still be all zeros)."""
    found: set[int] = set()
    with path.open("rb") as fh:
        extents = data_extents(fh.fileno(), os.fstat(fh.fileno()).st_size)
    for ext in extents:
        found.update(range(ext.offset // block_size, (ext.end - 1) // block_size + 1))
    return sorted(found)


def read_block(fh: Any, index: int, block_size: int = BLOCK_SIZE) -> bytes:
    """Block `index`, zero-padded to `block_size` at the end of the file."""
    data = os.pread(fh.fileno(), block_size, index * block_size)
    if len(data) < block_size:
        data += b"\0" * (block_size - len(data))
    return data


def scan_blocks(path: Path, block_size: int = BLOCK_SIZE) -> dict[int, bytes]:
    """Non-zero block index → binary SHA-256 of the block."""
    digests: dict[int, bytes] = {}
    zero = bytes(block_size)
    with path.open("rb") as fh:
        for index in candidate_blocks(path, block_size):
            data = read_block(fh, index, block_size)
            if data != zero:
                digests[index] = hashlib.sha256(data).digest()
    return digests


def aggregate_checksum(digests: Mapping[int, bytes]) -> str:
    """SHA-256 over the per-block digests in block-index order, base64 (LINEAR)."""
    h = hashlib.sha256()
    for index in sorted(digests):
        h.update(digests[index])
    return base64.b64encode(h.digest()).decode()


def progress_path(disk: Path) -> Path:
    return disk.with_name(disk.name + ".ebs-upload.json")


@dataclass
class UploadState:
    """What survives a crash: the snapshot and the blocks it acknowledged."""

    path: Path
    snapshot_id: str
    disk_sha256: str
    volume_size_gib: int
    acknowledged: set[int] = field(default_factory=set)
    completed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path: Path) -> UploadState | None:
        try:
            doc = json.loads(path.read_text())
            return cls(
                path=path,
                snapshot_id=str(doc["snapshot_id"]),
                disk_sha256=str(doc["disk_sha256"]),
                volume_size_gib=int(doc["volume_size_gib"]),
                acknowledged={int(i) for i in doc.get("acknowledged", [])},
                completed=bool(doc.get("completed", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self) -> None:
        doc = {
            "snapshot_id": self.snapshot_id,
            "disk_sha256": self.disk_sha256,
            "volume_size_gib": self.volume_size_gib,
            "block_size": BLOCK_SIZE,
            "completed": self.completed,
            "acknowledged": sorted(self.acknowledged),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, self.path)

    def acknowledge(self, index: int) -> None:
        with self._lock:
            self.acknowledged.add(index)
            self.save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in RETRYABLE_CODES or status >= 500
    return False


class Retrier:
    """Exponential backoff with full jitter; counts retries (thread-safe)."""

    def __init__(
        self,
        options: UploadOptions,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retries = 0
        self._lock = threading.Lock()

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                attempt += 1
                if not is_retryable(exc) or attempt >= self.options.max_attempts:
                    raise
                with self._lock:
                    self.retries += 1
                    cap = min(self.options.max_delay, self.options.base_delay * 2 ** (attempt - 1))
                    delay = self.rng.uniform(0, cap)
                log.debug("%s: %s, retry %d in %.2f s", what, exc, attempt, delay)
                self.sleep(delay)


def volume_size_gib(disk: Path, requested_gib: int) -> int:
    apparent = disk.stat().st_size
    return max(requested_gib, -(-apparent // GIB))


def _snapshot_state(ec2: Any, snapshot_id: str) -> str | None:
    try:
        snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except ClientError as exc:
        if "NotFound" in str(exc.response.get("Error", {}).get("Code", "")):
            return None
        raise
    return str(snaps[0]["State"]) if snaps else None


def _listed_blocks(ebs: Any, snapshot_id: str) -> set[int]:
    listed: set[int] = set()
    kwargs: dict[str, Any] = {"SnapshotId": snapshot_id}
    while True:
        page = ebs.list_snapshot_blocks(**kwargs)
        listed.update(int(b["BlockIndex"]) for b in page.get("Blocks", []))
        token = page.get("NextToken")
        if not token:
            return listed
        kwargs["NextToken"] = token


def upload_disk(
    ebs: Any,
    ec2: Any,
    disk: Path,
    *,
    disk_sha256: str,
    requested_gib: int,
    options: UploadOptions = UploadOptions(),
    on_snapshot: Callable[[str], None] = lambda _sid: None,
    on_progress: Callable[[int], None] = lambda _n: None,
    on_total: Callable[[int], None] = lambda _n: None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadResult:
    """Upload `disk` (resuming a previous attempt when one is recorded).

    `on_snapshot(snapshot_id)` is called as soon as the snapshot exists, so
    the caller can clean it up if anything later fails. `on_progress(bytes)`
    is called per block acknowledged (and once for resumed bytes);
    `on_total(bytes)` once the non-zero blocks are known.
    """
    started = time.monotonic()
    size_gib = volume_size_gib(disk, requested_gib)
    digests = scan_blocks(disk)
    aggregate = aggregate_checksum(digests)
    on_total(len(digests) * BLOCK_SIZE)
    retrier = Retrier(options, sleep=sleep)
    state_file = progress_path(disk)

    state = UploadState.load(state_file)
    if state is not None and (
        state.disk_sha256 != disk_sha256 or state.volume_size_gib != size_gib
    ):
        log.debug("progress file is for another disk; starting over")
        state = None
    if state is not None:
        status = _snapshot_state(ec2, state.snapshot_id)
        if status == "completed" and state.completed:
            on_snapshot(state.snapshot_id)
            return UploadResult(
                state.snapshot_id, size_gib, len(digests), 0, len(digests), 0, 0,
                aggregate, time.monotonic() - started,
            )
        # (moto reports EBS direct snapshots "completed" at once; AWS says "pending")
        if status not in ("pending", "completed"):
            log.debug("snapshot %s is %s; starting over", state.snapshot_id, status)
            if status == "error":
                ec2.delete_snapshot(SnapshotId=state.snapshot_id)
            state = None
    if state is None:
        kwargs: dict[str, Any] = {
            "VolumeSize": size_gib,
            "Timeout": options.timeout_minutes,
            "Description": options.description or f"amibake upload of {disk.name}",
            "ClientToken": f"amibake-{disk_sha256[:32]}-{int(time.time())}",
        }
        if options.tags:
            kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in options.tags.items()]
        if options.kms_key_arn:
            kwargs["Encrypted"] = True
            kwargs["KmsKeyArn"] = options.kms_key_arn
        snap = retrier.call("StartSnapshot", lambda: ebs.start_snapshot(**kwargs))
        state = UploadState(state_file, snap["SnapshotId"], disk_sha256, size_gib)
        state.save()
        on_snapshot(state.snapshot_id)
    else:
        on_snapshot(state.snapshot_id)
        listed = retrier.call(
            "ListSnapshotBlocks", lambda: _listed_blocks(ebs, state.snapshot_id)  # type: ignore[union-attr]
        )
        state.acknowledged = (state.acknowledged | listed) & set(digests)
        state.save()

    snapshot_id = state.snapshot_id
    resumed = len(state.acknowledged)
    on_progress(resumed * BLOCK_SIZE)
    todo = [i for i in sorted(digests) if i not in state.acknowledged]
    sent = 0
    sent_lock = threading.Lock()

    with disk.open("rb") as fh:

        def put(index: int) -> None:
            nonlocal sent
            data = read_block(fh, index)
            checksum = base64.b64encode(digests[index]).decode()
            retrier.call(
                f"PutSnapshotBlock {index}",
                lambda: ebs.put_snapshot_block(
                    SnapshotId=snapshot_id,
                    BlockIndex=index,
                    BlockData=data,
                    DataLength=BLOCK_SIZE,
                    Checksum=checksum,
                    ChecksumAlgorithm="SHA256",
                ),
            )
            state.acknowledge(index)  # type: ignore[union-attr]
            with sent_lock:
                sent += 1
            on_progress(BLOCK_SIZE)

        pool = ThreadPoolExecutor(max_workers=max(1, options.concurrency))
        try:
            futures = [pool.submit(put, i) for i in todo]
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    raise _upload_error(exc, snapshot_id) from exc
        finally:  # on an error or Ctrl-C: drop queued blocks, let in-flight ones finish
            pool.shutdown(wait=True, cancel_futures=True)

    retrier.call(
        "CompleteSnapshot",
        lambda: ebs.complete_snapshot(
            SnapshotId=snapshot_id,
            ChangedBlocksCount=len(digests),
            Checksum=aggregate,
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        ),
    )
    state.completed = True
    state.save()
    wait_snapshot_completed(ec2, snapshot_id, options.wait, sleep=sleep)
    return UploadResult(
        snapshot_id=snapshot_id,
        volume_size_gib=size_gib,
        blocks_total=len(digests),
        blocks_sent=sent,
        blocks_resumed=resumed,
        bytes_sent=sent * BLOCK_SIZE,
        retries=retrier.retries,
        aggregate_checksum=aggregate,
        seconds=time.monotonic() - started,
    )


def _upload_error(exc: BaseException, snapshot_id: str) -> BaseException:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return UserError(
            f"uploading to snapshot {snapshot_id} failed: {err.get('Code')}: {err.get('Message')}",
            hint="run the same command again to resume the upload",
        )
    return exc


def wait_snapshot_completed(
    ec2: Any, snapshot_id: str, waiter: Waiter, *, sleep: Callable[[float], None] = time.sleep
) -> None:
    def check() -> None:
        state = _snapshot_state(ec2, snapshot_id)
        if state == "completed":
            return
        if state in (None, "error"):
            raise UserError(
                f"snapshot {snapshot_id} ended in state {state or 'deleted'}",
                hint="the upload may have expired (StartSnapshot Timeout); publish again",
            )
        raise NotYet(f"snapshot {snapshot_id} is {state}")

    wait_for(check, waiter, sleep=sleep)
