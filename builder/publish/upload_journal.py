"""What survives a crash of the EBS upload: an append-only journal.

`<disk>.ebs-upload.journal` beside the disk. The first line is a JSON header
(the snapshot, the disk's SHA-256, the volume size, the block size), written
atomically before any block is sent; then one line per block EBS
acknowledged (its index), appended as it happens; `completed` once
CompleteSnapshot succeeded. Appends are fsynced in batches (every
`sync_every` blocks, and when the journal is closed), not per block: a block
acknowledged but not yet synced when the machine dies is found again by
ListSnapshotBlocks on resume, or sent again (sending a block twice is
harmless). A torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from builder.atomic import write_atomically

COMPLETED = "completed"


def journal_path(disk: Path) -> Path:
    return disk.with_name(disk.name + ".ebs-upload.journal")


@dataclass
class UploadJournal:
    path: Path
    snapshot_id: str
    #: the disk's digest (image.json's disk.digest): which disk this upload is of
    disk_digest: str
    volume_size_gib: int
    block_size: int
    acknowledged: set[int] = field(default_factory=set)
    completed: bool = False
    sync_every: int = 64
    _fh: IO[str] | None = field(default=None, repr=False)
    _unsynced: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: Path) -> UploadJournal | None:
        """The journal at `path`, or None when there is none (or its header is unreadable)."""
        try:
            text = path.read_text()
        except (OSError, UnicodeError):
            return None
        lines = text.split("\n")
        complete_lines = lines[:-1]  # the part after the last newline is torn (or empty)
        if not complete_lines:
            return None
        try:
            head = json.loads(complete_lines[0])
            digest = head["disk_digest"] if "disk_digest" in head else \
                "sha256:" + str(head["disk_sha256"])  # a journal of an older amibake
            journal = cls(path, str(head["snapshot_id"]), str(digest),
                          int(head["volume_size_gib"]), int(head["block_size"]))
        except (ValueError, KeyError, TypeError):
            return None
        for line in complete_lines[1:]:
            if line == COMPLETED:
                journal.completed = True
            elif line.isascii() and line.isdigit():
                journal.acknowledged.add(int(line))
        return journal

    # ------------------------------------------------------------ writing
    @classmethod
    def create(cls, path: Path, snapshot_id: str, disk_digest: str, volume_size_gib: int,
               block_size: int, acknowledged: Iterable[int] = ()) -> UploadJournal:
        """A new journal (replacing any other) holding `acknowledged` already."""
        journal = cls(path, snapshot_id, disk_digest, volume_size_gib, block_size,
                      set(acknowledged))
        head = json.dumps({"snapshot_id": snapshot_id, "disk_digest": disk_digest,
                           "volume_size_gib": volume_size_gib, "block_size": block_size},
                          separators=(",", ":"))
        body = "".join(f"{i}\n" for i in sorted(journal.acknowledged))
        write_atomically(path, head + "\n" + body)
        return journal

    def _append(self, line: str, *, sync: bool) -> None:
        if self._fh is None:
            self._fh = self.path.open("a")
        self._fh.write(line + "\n")
        self._unsynced += 1
        if sync or self._unsynced >= self.sync_every:
            self._sync()

    def _sync(self) -> None:
        if self._fh is not None and self._unsynced:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._unsynced = 0

    def acknowledge(self, index: int) -> None:
        with self._lock:
            if index not in self.acknowledged:
                self.acknowledged.add(index)
                self._append(str(index), sync=False)

    def complete(self) -> None:
        with self._lock:
            self.completed = True
            self._append(COMPLETED, sync=True)

    def close(self) -> None:
        with self._lock:
            self._sync()
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
