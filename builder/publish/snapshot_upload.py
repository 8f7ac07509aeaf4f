"""Upload a sparse raw disk to an EBS snapshot with the EBS direct APIs.

- 512 KiB blocks; all-zero blocks are never sent. Candidate blocks come from
  the file's data extents (SEEK_DATA/SEEK_HOLE), then a content check drops
  extents that hold only zeros.
- Before any block is sent, the disk's digest (image.json's disk.digest,
  builder.disk_digest) is checked with the blocks' digests.
- Each block carries its base64 SHA-256; CompleteSnapshot gets the changed
  block count and the aggregate checksum: SHA-256 of the concatenated binary
  per-block digests in block-index order, base64, algorithm SHA256,
  aggregation LINEAR (as the EBS direct API documents).
- Bounded concurrency (a thread pool); every request is retried by the
  clients' one retry policy (builder/aws/retry.py).
- StartSnapshot with a Timeout so an abandoned upload expires, tags, optional
  KMS encryption.
- Resumable: `<disk>.ebs-upload.journal` next to the image (upload_journal.py)
  holds the snapshot id and the acknowledged block indexes; on resume they
  are reconciled with ListSnapshotBlocks and never sent again. A failure
  worth resuming (retries exhausted, the network gone) raises
  `builder.steps.Resumable`, whose hint says to run the same command again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from builder.aws.retry import Retries, is_retryable
from builder.disk_digest import (
    BLOCK,
    BLOCKS,
    ZERO_BLOCK,
    combine,
    data_blocks,
    file_digest,
    split,
)
from builder.errors import UserError
from builder.publish.images import delete_snapshot
from builder.publish.upload_journal import UploadJournal, journal_path
from builder.steps import Resumable
from builder.wait import NotYet, Waiter, wait_for

if TYPE_CHECKING:
    from mypy_boto3_ebs import EBSClient
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger("amibake.ebs")

BLOCK_SIZE = BLOCK  # EBS's snapshot block: the disk digest's block too
GIB = 1024**3
@dataclass(frozen=True)
class UploadOptions:
    concurrency: int = 8
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
    with path.open("rb") as fh:
        return data_blocks(fh.fileno(), os.fstat(fh.fileno()).st_size, block_size)


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


def check_disk_digest(disk: Path, digests: Mapping[int, bytes], disk_digest: str) -> None:
    """UserError unless `disk` has `disk_digest` (image.json's): a block digest is
    checked with the blocks' digests just taken for the upload (no second read);
    a plain sha256 (an older image.json) is taken again."""
    algorithm, _ = split(disk_digest)
    size = disk.stat().st_size
    if algorithm == BLOCKS and size % BLOCK_SIZE == 0:
        got = combine(digests.get(i, ZERO_BLOCK) for i in range(size // BLOCK_SIZE))
    else:
        got = file_digest(disk, algorithm)
    if got != disk_digest:
        raise UserError(f"{disk} is not the disk its image.json names "
                        f"(digest {got[:32]}…, image.json {disk_digest[:32]}…)",
                        hint="the disk changed after it was baked: bake the image again")


def aggregate_checksum(digests: Mapping[int, bytes]) -> str:
    """SHA-256 over the per-block digests in block-index order, base64 (LINEAR)."""
    h = hashlib.sha256()
    for index in sorted(digests):
        h.update(digests[index])
    return base64.b64encode(h.digest()).decode()


def volume_size_gib(disk: Path, requested_gib: int) -> int:
    apparent = disk.stat().st_size
    return max(requested_gib, -(-apparent // GIB))


def _snapshot_state(ec2: EC2Client, snapshot_id: str) -> str | None:
    try:
        snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except ClientError as exc:
        if "NotFound" in str(exc.response.get("Error", {}).get("Code", "")):
            return None
        raise
    return str(snaps[0]["State"]) if snaps else None


def _listed_blocks(ebs: EBSClient, snapshot_id: str) -> set[int]:
    listed: set[int] = set()
    token = ""
    while True:
        page = (ebs.list_snapshot_blocks(SnapshotId=snapshot_id, NextToken=token) if token
                else ebs.list_snapshot_blocks(SnapshotId=snapshot_id))
        listed.update(int(b["BlockIndex"]) for b in page.get("Blocks", []))
        token = page.get("NextToken", "")
        if not token:
            return listed


def _resumable_journal(journal: UploadJournal | None, ec2: EC2Client, disk_digest: str,
                       size_gib: int) -> UploadJournal | None:
    """The journal of an earlier attempt at this very disk whose snapshot can take more."""
    if journal is None:
        return None
    if (journal.disk_digest, journal.volume_size_gib, journal.block_size) != (
            disk_digest, size_gib, BLOCK_SIZE):
        log.debug("upload journal is for another disk; starting over")
        return None
    status = _snapshot_state(ec2, journal.snapshot_id)
    # (moto reports EBS direct snapshots "completed" at once; AWS says "pending")
    if status in ("pending", "completed"):
        return journal
    log.debug("snapshot %s is %s; starting over", journal.snapshot_id, status)
    if status == "error":
        delete_snapshot(ec2, journal.snapshot_id)
    return None


def upload_disk(
    ebs: EBSClient,
    ec2: EC2Client,
    disk: Path,
    *,
    disk_digest: str,
    requested_gib: int,
    options: UploadOptions = UploadOptions(),
    retries: Retries | None = None,
    on_snapshot: Callable[[str], None] = lambda _sid: None,
    on_progress: Callable[[int], None] = lambda _n: None,
    on_total: Callable[[int], None] = lambda _n: None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadResult:
    """Upload `disk` (resuming a previous attempt when one is journalled).

    `on_snapshot(snapshot_id)` is called as soon as the snapshot exists, so
    the caller can clean it up if anything later fails. `on_progress(bytes)`
    is called per block acknowledged (and once for resumed bytes);
    `on_total(bytes)` once the non-zero blocks are known. `retries` is the
    clients' retry policy (its count goes into the result); `sleep` is the
    clock of the wait for the snapshot to complete.
    """
    started = time.monotonic()
    retried_before = retries.count if retries else 0
    size_gib = volume_size_gib(disk, requested_gib)
    digests = scan_blocks(disk)
    check_disk_digest(disk, digests, disk_digest)
    aggregate = aggregate_checksum(digests)
    on_total(len(digests) * BLOCK_SIZE)
    path = journal_path(disk)

    journal = _resumable_journal(UploadJournal.load(path), ec2, disk_digest, size_gib)
    if journal is not None and journal.completed:
        on_snapshot(journal.snapshot_id)
        return UploadResult(
            journal.snapshot_id, size_gib, len(digests), 0, len(digests), 0, 0,
            aggregate, time.monotonic() - started,
        )
    if journal is None:
        request: dict[str, Any] = {
            "VolumeSize": size_gib,
            "Timeout": options.timeout_minutes,
            "Description": options.description or f"amibake upload of {disk.name}",
            "ClientToken": f"amibake-{split(disk_digest)[1][:32]}-{int(time.time())}",
        }
        if options.tags:
            request["Tags"] = [{"Key": k, "Value": v} for k, v in options.tags.items()]
        if options.kms_key_arn:
            request["Encrypted"] = True
            request["KmsKeyArn"] = options.kms_key_arn
        try:
            snapshot_id = ebs.start_snapshot(**request)["SnapshotId"]
        except Exception as exc:
            raise _upload_error(exc, "starting the snapshot upload") from exc
        journal = UploadJournal.create(path, snapshot_id, disk_digest, size_gib, BLOCK_SIZE)
        on_snapshot(snapshot_id)
    else:
        snapshot_id = journal.snapshot_id
        on_snapshot(snapshot_id)
        try:
            listed = _listed_blocks(ebs, snapshot_id)
        except Exception as exc:
            raise _upload_error(exc, f"listing the blocks of {snapshot_id}") from exc
        journal.close()
        journal = UploadJournal.create(path, snapshot_id, disk_digest, size_gib, BLOCK_SIZE,
                                       (journal.acknowledged | listed) & set(digests))

    resumed = len(journal.acknowledged)
    on_progress(resumed * BLOCK_SIZE)
    todo = [i for i in sorted(digests) if i not in journal.acknowledged]
    sent = 0
    sent_lock = threading.Lock()

    try:
        with disk.open("rb") as fh:

            def put(index: int) -> None:
                nonlocal sent
                data = read_block(fh, index)
                ebs.put_snapshot_block(
                    SnapshotId=snapshot_id,
                    BlockIndex=index,
                    BlockData=data,
                    DataLength=BLOCK_SIZE,
                    Checksum=base64.b64encode(digests[index]).decode(),
                    ChecksumAlgorithm="SHA256",
                )
                journal.acknowledge(index)
                with sent_lock:
                    sent += 1
                on_progress(BLOCK_SIZE)

            pool = ThreadPoolExecutor(max_workers=max(1, options.concurrency))
            try:
                futures = [pool.submit(put, i) for i in todo]
                done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in done:
                    failure = fut.exception()
                    if failure is not None:
                        raise _upload_error(failure,
                                            f"uploading to snapshot {snapshot_id}") from failure
            finally:  # on an error or Ctrl-C: drop queued blocks, let in-flight ones finish
                pool.shutdown(wait=True, cancel_futures=True)

        try:
            ebs.complete_snapshot(
                SnapshotId=snapshot_id,
                ChangedBlocksCount=len(digests),
                Checksum=aggregate,
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        except Exception as exc:
            raise _upload_error(exc, f"completing snapshot {snapshot_id}") from exc
        journal.complete()
    finally:
        journal.close()
    wait_snapshot_completed(ec2, snapshot_id, options.wait, sleep=sleep)
    return UploadResult(
        snapshot_id=snapshot_id,
        volume_size_gib=size_gib,
        blocks_total=len(digests),
        blocks_sent=sent,
        blocks_resumed=resumed,
        bytes_sent=sent * BLOCK_SIZE,
        retries=(retries.count - retried_before) if retries else 0,
        aggregate_checksum=aggregate,
        seconds=time.monotonic() - started,
    )


def _upload_error(exc: BaseException, doing: str) -> BaseException:
    """A failure worth resuming → Resumable; a refusal → UserError; anything else as is."""
    if is_retryable(exc):
        return Resumable(
            f"{doing} failed: {_describe(exc)}",
            hint="run the same command again to resume the upload: blocks already "
            "sent are not sent again",
        )
    if isinstance(exc, ClientError):
        return UserError(f"{doing} failed: {_describe(exc)}",
                         hint="fix the cause and publish again; the partial snapshot was deleted")
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return str(exc)


def wait_snapshot_completed(
    ec2: EC2Client, snapshot_id: str, waiter: Waiter, *,
    sleep: Callable[[float], None] = time.sleep
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
