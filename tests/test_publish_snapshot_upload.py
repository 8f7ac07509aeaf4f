"""The EBS direct uploader against moto: blocks, checksums, retries, resume, journal."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from builder.disk_digest import file_digest
from builder.errors import UserError
from builder.publish.snapshot_upload import (
    BLOCK_SIZE,
    UploadOptions,
    aggregate_checksum,
    candidate_blocks,
    scan_blocks,
    upload_disk,
)
from builder.publish.upload_journal import UploadJournal, journal_path
from builder.steps import Resumable
from tests.aws_fixtures import (
    DATA_BLOCKS,
    PARTIAL_BLOCK,
    ZERO_DATA_BLOCKS,
    Aws,
    block_index,
    http_error,
    write_sparse_disk,
)

NONZERO = {*DATA_BLOCKS, PARTIAL_BLOCK}
NO_SLEEP = {"sleep": lambda _s: None}

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    write_sparse_disk(path)
    return path


def test_scan_uses_extents_and_drops_zero_blocks(disk: Path) -> None:
    candidates = set(candidate_blocks(disk))
    # holes are never even read; written zeros are read and then dropped
    assert NONZERO | set(ZERO_DATA_BLOCKS) <= candidates
    assert len(candidates) < 128 / 2
    digests = scan_blocks(disk)
    assert set(digests) == NONZERO
    with disk.open("rb") as fh:
        fh.seek(7 * BLOCK_SIZE)
        assert digests[7] == hashlib.sha256(fh.read(BLOCK_SIZE)).digest()


def test_last_partial_block_is_padded(tmp_path: Path) -> None:
    path = tmp_path / "odd.raw"
    path.write_bytes(b"\x01" * (BLOCK_SIZE + 10))
    digests = scan_blocks(path)
    assert set(digests) == {0, 1}
    assert digests[1] == hashlib.sha256(b"\x01" * 10 + bytes(BLOCK_SIZE - 10)).digest()


def test_aggregate_checksum_is_linear_over_binary_digests_in_index_order() -> None:
    digests = {5: hashlib.sha256(b"b").digest(), 2: hashlib.sha256(b"a").digest()}
    expected = base64.b64encode(
        hashlib.sha256(hashlib.sha256(b"a").digest() + hashlib.sha256(b"b").digest()).digest()
    ).decode()
    assert aggregate_checksum(digests) == expected


def _snapshot_bytes(aws: Aws, snapshot_id: str, blocks: int) -> bytes:
    """The volume the snapshot describes, rebuilt block by block (holes as zeros)."""
    ebs = aws.clients.ebs()
    listed = {b["BlockIndex"]: b["BlockToken"]
              for b in ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]}
    out = bytearray(blocks * BLOCK_SIZE)
    for index, token in listed.items():
        data = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index,
                                      BlockToken=token)["BlockData"].read()
        out[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE] = data
    return bytes(out)


def test_upload_sends_only_nonzero_blocks_with_checksums(aws: Aws, disk: Path) -> None:
    digest = file_digest(disk)
    result = upload_disk(
        aws.clients.ebs(), aws.clients.ec2(), disk, disk_digest=digest, requested_gib=1,
        options=UploadOptions(concurrency=4, timeout_minutes=90, kms_key_arn="arn:aws:kms:k",
                              tags={"amibake:build-id": "b-test"}), **NO_SLEEP,
    )
    puts = aws.recorder.of("PutSnapshotBlock")
    assert sorted(c.params["BlockIndex"] for c in puts) == sorted(NONZERO)
    assert result.bytes_sent == len(NONZERO) * BLOCK_SIZE
    for call in puts:
        body = call.params["BlockData"]
        assert len(body) == BLOCK_SIZE == call.params["DataLength"]
        assert call.params["ChecksumAlgorithm"] == "SHA256"
        assert call.params["Checksum"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    (start,) = aws.recorder.of("StartSnapshot")
    assert start.params["Timeout"] == 90
    assert start.params["VolumeSize"] == 1
    assert start.params["Encrypted"] is True and start.params["KmsKeyArn"] == "arn:aws:kms:k"
    assert {"Key": "amibake:build-id", "Value": "b-test"} in start.params["Tags"]
    (complete,) = aws.recorder.of("CompleteSnapshot")
    assert complete.params["ChangedBlocksCount"] == len(NONZERO)
    assert complete.params["ChecksumAggregationMethod"] == "LINEAR"
    assert complete.params["ChecksumAlgorithm"] == "SHA256"
    assert complete.params["Checksum"] == aggregate_checksum(scan_blocks(disk))
    # the data round-trips: the snapshot is the disk
    rebuilt = _snapshot_bytes(aws, result.snapshot_id, 128)
    assert rebuilt == disk.read_bytes()
    state = aws.clients.ec2().describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"]
    assert state[0]["State"] == "completed"
    journal = UploadJournal.load(journal_path(disk))
    assert journal is not None and journal.completed and journal.acknowledged == NONZERO


def test_throttled_blocks_are_retried_by_the_one_policy(aws: Aws, disk: Path) -> None:
    """Throttling and 5xx answers are re-sent by the clients' retry policy:
    counted at the HTTP level, slept on the fake clock."""
    throttled = {0, 7, 41}
    seen: dict[int, int] = {}

    def throttle(operation: str, request: Any) -> Any:
        if operation != "PutSnapshotBlock":
            return None
        index = block_index(request)
        seen[index] = seen.get(index, 0) + 1
        if index in throttled and seen[index] <= 2:
            if index == 41:
                return http_error("ebs", "InternalServerException", 500)
            return http_error("ebs", "ThrottlingException", 400)
        return None

    aws.sends.fail = throttle
    ebs = aws.clients.ebs()
    result = upload_disk(ebs, aws.clients.ec2(), disk, disk_digest=file_digest(disk),
                         requested_gib=1, options=UploadOptions(concurrency=3),
                         retries=aws.clients.retries, **NO_SLEEP)
    assert result.retries == 2 * len(throttled)
    assert len(aws.sleeps) == 6 and all(0 <= s <= 20 for s in aws.sleeps)
    # one send per block, plus the two retries of each throttled one
    assert len(aws.sends.of("PutSnapshotBlock")) == len(NONZERO) + 2 * len(throttled)
    assert {i for i, n in seen.items() if n == 3} == throttled
    listed = ebs.list_snapshot_blocks(SnapshotId=result.snapshot_id)["Blocks"]
    assert {b["BlockIndex"] for b in listed} == NONZERO


def test_throttling_past_the_attempts_is_resumable(aws: Aws, disk: Path) -> None:
    """Bounded: a block throttled for ever is sent max_attempts times, then the
    upload stops with an error that says to resume (and the journal stays)."""
    stuck = sorted(NONZERO)[2]
    aws.sends.fail = lambda op, req: (http_error("ebs", "ThrottlingException")
                                      if op == "PutSnapshotBlock" and block_index(req) == stuck
                                      else None)
    with pytest.raises(Resumable, match="ThrottlingException") as err:
        upload_disk(aws.clients.ebs(), aws.clients.ec2(), disk, disk_digest=file_digest(disk),
                    requested_gib=1, options=UploadOptions(concurrency=1), **NO_SLEEP)
    assert "resume" in err.value.hint
    sent = [r for r in aws.sends.of("PutSnapshotBlock") if block_index(r) == stuck]
    assert len(sent) == aws.clients.retries.policy.max_attempts
    assert len(aws.sleeps) == aws.clients.retries.policy.max_attempts - 1
    assert journal_path(disk).exists()


def test_non_retryable_error_stops_with_a_user_error(aws: Aws, disk: Path) -> None:
    aws.sends.fail = lambda op, _r: (http_error("ebs", "AccessDeniedException", 403)
                                     if op == "PutSnapshotBlock" else None)
    with pytest.raises(UserError, match="AccessDeniedException") as err:
        upload_disk(aws.clients.ebs(), aws.clients.ec2(), disk, disk_digest=file_digest(disk),
                    requested_gib=1, **NO_SLEEP)
    assert not isinstance(err.value, Resumable)
    assert len(aws.sends.of("PutSnapshotBlock")) <= 8  # no retries: at most one per block
    assert aws.sleeps == []


class Crash(Exception):
    """Stands in for the process dying mid-upload."""


def test_crash_mid_upload_then_resume(aws: Aws, disk: Path) -> None:
    digest = file_digest(disk)
    ebs = aws.clients.ebs()

    def crash_on_fourth(params: Any, context: dict[str, Any], **_: Any) -> Any:
        index = context["amibake_params"]["BlockIndex"]
        if index == sorted(NONZERO)[4]:
            raise Crash("power cut")
        return None

    ebs.meta.events.register("before-call.ebs.PutSnapshotBlock", crash_on_fourth)
    with pytest.raises(Crash):
        upload_disk(ebs, aws.clients.ec2(), disk, disk_digest=digest, requested_gib=1,
                    options=UploadOptions(concurrency=1), **NO_SLEEP)
    journal = UploadJournal.load(journal_path(disk))
    assert journal is not None
    acked_first = set(journal.acknowledged)
    # everything before the crash is acknowledged; the crashed block is not
    assert set(sorted(NONZERO)[:4]) <= acked_first and sorted(NONZERO)[4] not in acked_first
    snapshot_id = journal.snapshot_id
    # lose one acknowledgement (never synced), and the process died mid-line:
    # ListSnapshotBlocks must still know the block, the torn line is ignored
    lines = journal_path(disk).read_text().splitlines()
    lost = sorted(acked_first)[0]
    kept = [line for line in lines if line != str(lost)]
    journal_path(disk).write_text("\n".join(kept) + "\n" + "9")  # torn: no newline
    reread = UploadJournal.load(journal_path(disk))
    assert reread is not None and 9 not in reread.acknowledged and lost not in reread.acknowledged

    ebs.meta.events.unregister("before-call.ebs.PutSnapshotBlock", crash_on_fourth)
    aws.recorder.clear()
    result = upload_disk(ebs, aws.clients.ec2(), disk, disk_digest=digest, requested_gib=1,
                         options=UploadOptions(concurrency=2), **NO_SLEEP)
    assert result.snapshot_id == snapshot_id
    assert not aws.recorder.of("StartSnapshot")
    sent_again = {c.params["BlockIndex"] for c in aws.recorder.of("PutSnapshotBlock")}
    assert sent_again == NONZERO - acked_first
    assert result.blocks_resumed == len(acked_first)
    (complete,) = aws.recorder.of("CompleteSnapshot")
    assert complete.params["ChangedBlocksCount"] == len(NONZERO)
    assert complete.params["Checksum"] == aggregate_checksum(scan_blocks(disk))
    assert _snapshot_bytes(aws, snapshot_id, 128) == disk.read_bytes()


def test_journal_appends_one_line_per_block_and_syncs_in_batches(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import os

    syncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd))[1])
    path = tmp_path / "d.ebs-upload.journal"
    journal = UploadJournal.create(path, "snap-1", "a" * 64, 1, BLOCK_SIZE)
    syncs.clear()
    journal.sync_every = 10
    for index in range(25):
        journal.acknowledge(index)
    assert len(syncs) == 2  # after 10 and 20 blocks, not 25 times
    journal.close()
    assert len(syncs) == 3
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 25 and lines[1:] == [str(i) for i in range(25)]
    again = UploadJournal.load(path)
    assert again is not None and again.acknowledged == set(range(25))


def test_journal_of_another_disk_starts_over(aws: Aws, disk: Path) -> None:
    UploadJournal.create(journal_path(disk), "snap-0123456789abcdef0", "0" * 64, 1, BLOCK_SIZE,
                         [0, 1, 2]).close()
    result = upload_disk(aws.clients.ebs(), aws.clients.ec2(), disk,
                         disk_digest=file_digest(disk), requested_gib=1, **NO_SLEEP)
    assert result.snapshot_id != "snap-0123456789abcdef0"
    assert result.blocks_sent == len(NONZERO)
