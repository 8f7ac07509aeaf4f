"""Benchmark: the EBS direct uploader against a local endpoint (moto's server).

Measures, on a stored image (the newest under images/, or a generated 2 GiB
ext4 disk filled from a real directory tree):
- bytes sent vs the image's apparent size and its used (allocated) blocks;
  target: bytes sent <= 1.02 x used;
- blocks/s and wall time of amibake's uploader (zero blocks skipped, thread
  pool) vs a naive sequential uploader of every block, in the same run.

Usage: .venv/bin/python bench/publish.py [--image DIR] [--runs 3] [--naive-limit N]
Prints the figures and writes bench/results/publish.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from builder.aws.clients import Clients  # noqa: E402
from builder.disk_digest import file_digest  # noqa: E402
from builder.publish.snapshot_upload import (  # noqa: E402
    BLOCK_SIZE,
    GIB,
    UploadOptions,
    read_block,
    scan_blocks,
    upload_disk,
)
from builder.publish.upload_journal import UploadJournal, journal_path  # noqa: E402


def newest_stored_image() -> Path | None:
    found = sorted((ROOT / "images").glob("*/*/image.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def generate_image(workdir: Path) -> tuple[Path, str]:
    """A 2 GiB ext4 disk made by mkfs.ext4 -d from a real tree (the venv's packages)."""
    tree = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    disk = workdir / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate(2 * GIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree / "site-packages"), str(disk)],
                   check=True)
    return disk, f"generated: 2 GiB ext4 from {tree / 'site-packages'}"


class ByteCounter:
    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        self.bytes += len(params["BlockData"])
        self.calls += 1


def naive_upload(ebs: Any, disk: Path, limit: int | None) -> tuple[int, float, int]:
    """Every block in order, one at a time (no zero skip). Returns (blocks, seconds, total)."""
    total = -(-disk.stat().st_size // BLOCK_SIZE)
    count = total if limit is None else min(limit, total)
    size_gib = -(-disk.stat().st_size // GIB)
    snap = ebs.start_snapshot(VolumeSize=size_gib, Timeout=60)["SnapshotId"]
    start = time.monotonic()
    with disk.open("rb") as fh:
        for index in range(count):
            data = read_block(fh, index)
            ebs.put_snapshot_block(
                SnapshotId=snap, BlockIndex=index, BlockData=data, DataLength=BLOCK_SIZE,
                Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                ChecksumAlgorithm="SHA256")
    return count, time.monotonic() - start, total


def journal_cost(workdir: Path, blocks: int = 16384) -> dict[str, float]:
    """Recording `blocks` acknowledgements: the append-only journal (batched
    fsync) against rewriting the whole JSON progress file per block, as the
    uploader did before (temp file + rename, under a lock)."""
    path = workdir / "bench.ebs-upload.journal"
    start = time.perf_counter()
    journal = UploadJournal.create(path, "snap-bench", "0" * 64, 64, BLOCK_SIZE)
    for index in range(blocks):
        journal.acknowledge(index)
    journal.close()
    journal_s = time.perf_counter() - start
    rewrite = workdir / "bench.ebs-upload.json"
    acked: set[int] = set()
    start = time.perf_counter()
    for index in range(blocks):
        acked.add(index)
        tmp = rewrite.with_name(rewrite.name + ".tmp")
        tmp.write_text(json.dumps({"snapshot_id": "snap-bench", "acknowledged": sorted(acked)},
                                  separators=(",", ":")))
        os.replace(tmp, rewrite)
    rewrite_s = time.perf_counter() - start
    return {"blocks": blocks, "journal_seconds": round(journal_s, 3),
            "rewrite_per_block_seconds": round(rewrite_s, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a stored image directory (image.json)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--naive-limit", type=int, default=None,
                        help="send only the first N blocks naively and project the rest")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    tmp = Path(tempfile.mkdtemp(prefix="amibake-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        image_dir = args.image or newest_stored_image()
        if image_dir is not None:
            meta = json.loads((image_dir / "image.json").read_text())
            src = image_dir / meta["disk"]["file"]
            disk = tmp / "disk.raw"  # a copy: the upload journal must not land in the store
            subprocess.run(["cp", "--sparse=always", str(src), str(disk)], check=True)
            source = f"stored image {image_dir}"
        else:
            disk, source = generate_image(tmp)
        apparent = disk.stat().st_size
        used = os.stat(disk).st_blocks * 512
        digests = scan_blocks(disk)
        digest = file_digest(disk)
        host, port = server.get_host_and_port()
        session = boto3.Session(region_name="us-east-1")
        clients = Clients(session, endpoint_url=f"http://{host}:{port}",
                          max_pool_connections=max(16, args.concurrency))
        counter = ByteCounter()
        ebs = clients.ebs()
        ebs.meta.events.register("provide-client-params.ebs.PutSnapshotBlock", counter)

        ours: list[dict[str, Any]] = []
        for _ in range(args.runs):
            journal_path(disk).unlink(missing_ok=True)
            counter.bytes = counter.calls = 0
            result = upload_disk(ebs, clients.ec2(), disk, disk_digest=digest,
                                 requested_gib=-(-apparent // GIB),
                                 options=UploadOptions(concurrency=args.concurrency),
                                 retries=clients.retries)
            ours.append({"seconds": result.seconds, "blocks_sent": counter.calls,
                         "bytes_sent": counter.bytes,
                         "blocks_per_s": counter.calls / result.seconds})
        counter.bytes = counter.calls = 0
        n, naive_s, total_blocks = naive_upload(ebs, disk, args.naive_limit)
        naive_rate = n / naive_s
        naive_total_s = total_blocks / naive_rate
        journal = journal_cost(tmp)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
    bytes_sent = int(med["bytes_sent"])
    doc = {
        "source": source,
        "apparent_size": apparent,
        "used_bytes": used,
        "nonzero_blocks": len(digests),
        "block_size": BLOCK_SIZE,
        "bytes_sent": bytes_sent,
        "sent_vs_apparent": round(bytes_sent / apparent, 4),
        "sent_vs_used": round(bytes_sent / used, 4),
        "target_sent_vs_used_max": 1.02,
        "target_met": bytes_sent <= 1.02 * used,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "ours_seconds_median": round(med["seconds"], 3),
        "ours_blocks_per_s_median": round(med["blocks_per_s"], 1),
        "ours_runs": ours,
        "naive_blocks_sent": n,
        "naive_blocks_total": total_blocks,
        "naive_blocks_per_s": round(naive_rate, 1),
        "naive_seconds_all_blocks": round(naive_total_s, 3),
        "naive_projected": n < total_blocks,
        "speedup_wall_time": round(naive_total_s / med["seconds"], 2),
        "endpoint": "moto ThreadedMotoServer on 127.0.0.1 (CPU-bound; not AWS speed)",
        "progress_records": journal,
    }
    out = ROOT / "bench" / "results" / "publish.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"image: {source}")
    print(f"apparent {apparent / 2**20:.0f} MiB, used {used / 2**20:.1f} MiB, "
          f"{len(digests)} non-zero blocks of {BLOCK_SIZE // 1024} KiB")
    print(f"bytes sent {bytes_sent / 2**20:.1f} MiB = {doc['sent_vs_used']:.4f} x used, "
          f"{doc['sent_vs_apparent']:.4f} x apparent (target <= 1.02 x used: "
          f"{'met' if doc['target_met'] else 'MISSED'})")
    print(f"amibake uploader: {doc['ours_blocks_per_s_median']} blocks/s, "
          f"{doc['ours_seconds_median']} s (median of {args.runs}, concurrency "
          f"{args.concurrency})")
    print(f"naive sequential: {doc['naive_blocks_per_s']} blocks/s, "
          f"{doc['naive_seconds_all_blocks']} s for all {total_blocks} blocks"
          f"{' (projected)' if doc['naive_projected'] else ''}; "
          f"wall-time speedup {doc['speedup_wall_time']}x")
    print(f"progress of {journal['blocks']} blocks: journal {journal['journal_seconds']} s, "
          f"whole-file rewrite per block {journal['rewrite_per_block_seconds']} s")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if doc["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
