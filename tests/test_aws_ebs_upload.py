"""The EBS direct uploader against moto: blocks, checksums, retries, resume."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from builder.aws.ebs_upload import (
    BLOCK_SIZE,
    UploadOptions,
    aggregate_checksum,
    candidate_blocks,
    progress_path,
    scan_blocks,
    upload_disk,
)
from builder.errors import UserError
from tests.aws_fixtures import (
    DATA_BLOCKS,
    PARTIAL_BLOCK,
    ZERO_DATA_BLOCKS,
    Aws,
    error_response,
    sha256_file,
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
    digest = sha256_file(disk)
    result = upload_disk(
        aws.clients.ebs(), aws.clients.ec2(), disk, disk_sha256=digest, requested_gib=1,
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
    assert hashlib.sha256(rebuilt).hexdigest() == digest
    state = aws.clients.ec2().describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"]
    assert state[0]["State"] == "completed"
    assert json.loads(progress_path(disk).read_text())["completed"] is True


def test_throttled_blocks_are_retried(aws: Aws, disk: Path) -> None:
    throttled = {0, 7, 41}
    seen: dict[int, int] = {}
    sleeps: list[float] = []

    def throttle(params: Any, context: dict[str, Any], **_: Any) -> Any:
        index = context["amibake_params"]["BlockIndex"]
        seen[index] = seen.get(index, 0) + 1
        if index in throttled and seen[index] <= 2:
            code, status = (("ThrottlingException", 400) if index != 41
                            else ("InternalServerException", 500))
            return error_response(code, status)
        return None

    ebs = aws.clients.ebs()
    ebs.meta.events.register("before-call.ebs.PutSnapshotBlock", throttle)
    result = upload_disk(ebs, aws.clients.ec2(), disk, disk_sha256=sha256_file(disk),
                         requested_gib=1, options=UploadOptions(concurrency=3),
                         sleep=sleeps.append)
    assert result.retries == 2 * len(throttled)
    assert len(sleeps) == 6 and all(0 <= s <= 20 for s in sleeps)
    assert {i for i, n in seen.items() if n == 3} == throttled
    listed = ebs.list_snapshot_blocks(SnapshotId=result.snapshot_id)["Blocks"]
    assert {b["BlockIndex"] for b in listed} == NONZERO


def test_non_retryable_error_stops_with_a_user_error(aws: Aws, disk: Path) -> None:
    def deny(**_: Any) -> Any:
        return error_response("AccessDeniedException", 403)

    ebs = aws.clients.ebs()
    ebs.meta.events.register("before-call.ebs.PutSnapshotBlock", deny)
    with pytest.raises(UserError, match="AccessDeniedException"):
        upload_disk(ebs, aws.clients.ec2(), disk, disk_sha256=sha256_file(disk),
                    requested_gib=1, **NO_SLEEP)
    assert len(aws.recorder.of("PutSnapshotBlock")) <= 8  # no retries: at most one per block


class Crash(Exception):
    """Stands in for the process dying mid-upload."""


def test_crash_mid_upload_then_resume(aws: Aws, disk: Path) -> None:
    digest = sha256_file(disk)
    ebs = aws.clients.ebs()
    acked_first: set[int] = set()

    def crash_on_fourth(params: Any, context: dict[str, Any], **_: Any) -> Any:
        index = context["amibake_params"]["BlockIndex"]
        if index == sorted(NONZERO)[4]:
            raise Crash("power cut")
        return None

    ebs.meta.events.register("before-call.ebs.PutSnapshotBlock", crash_on_fourth)
    with pytest.raises(Crash):
        upload_disk(ebs, aws.clients.ec2(), disk, disk_sha256=digest, requested_gib=1,
                    options=UploadOptions(concurrency=1), **NO_SLEEP)
    state = json.loads(progress_path(disk).read_text())
    acked_first = set(state["acknowledged"])
    # everything before the crash is acknowledged; the crashed block is not
    assert set(sorted(NONZERO)[:4]) <= acked_first and sorted(NONZERO)[4] not in acked_first
    snapshot_id = state["snapshot_id"]
    # lose one acknowledgement from the file: ListSnapshotBlocks must still know it
    state["acknowledged"] = sorted(acked_first)[1:]
    progress_path(disk).write_text(json.dumps(state))

    ebs.meta.events.unregister("before-call.ebs.PutSnapshotBlock", crash_on_fourth)
    aws.recorder.clear()
    result = upload_disk(ebs, aws.clients.ec2(), disk, disk_sha256=digest, requested_gib=1,
                         options=UploadOptions(concurrency=2), **NO_SLEEP)
    assert result.snapshot_id == snapshot_id
    assert not aws.recorder.of("StartSnapshot")
    sent_again = {c.params["BlockIndex"] for c in aws.recorder.of("PutSnapshotBlock")}
    assert sent_again == NONZERO - acked_first
    assert result.blocks_resumed == len(acked_first)
    (complete,) = aws.recorder.of("CompleteSnapshot")
    assert complete.params["ChangedBlocksCount"] == len(NONZERO)
    assert complete.params["Checksum"] == aggregate_checksum(scan_blocks(disk))
    assert hashlib.sha256(_snapshot_bytes(aws, snapshot_id, 128)).hexdigest() == digest


def test_progress_for_another_disk_starts_over(aws: Aws, disk: Path) -> None:
    progress_path(disk).write_text(json.dumps({
        "snapshot_id": "snap-0123456789abcdef0", "disk_sha256": "0" * 64,
        "volume_size_gib": 1, "acknowledged": [0, 1, 2]}))
    result = upload_disk(aws.clients.ebs(), aws.clients.ec2(), disk,
                         disk_sha256=sha256_file(disk), requested_gib=1, **NO_SLEEP)
    assert result.snapshot_id != "snap-0123456789abcdef0"
    assert result.blocks_sent == len(NONZERO)
