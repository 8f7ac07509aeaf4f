"""Uploaded files: rsync pre-sync and final sync with --delete, locally or
over SSH, and a verification pass that compares checksums of every file."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from builder.errors import UserError
from builder.manifest.model import FilesSync
from builder.proc import CommandError, run

_ITEM = re.compile(r"^(\*deleting|[<>ch.*][fdLDS][.+?cstpoguax]*)\s")


def rsync_cmd(spec: FilesSync, *extra: str) -> list[str]:
    cmd = ["rsync", "-aH", "--numeric-ids", "--delete", *extra]
    if spec.transport == "ssh":
        cmd += ["-e", shlex.join(["ssh", "-o", "BatchMode=yes", *spec.ssh_options])]
    return [*cmd, spec.source.rstrip("/") + "/", spec.destination.rstrip("/") + "/"]


def _rsync(cmd: list[str]) -> str:
    try:
        return run(cmd, capture=True, timeout=24 * 3600).stdout
    except CommandError as err:
        raise UserError(f"rsync failed: {_reason(err.stderr) or err.message}",
                        hint="check the paths and SSH access in cutover.files") from err


def _reason(stderr: str) -> str:
    """The line that says why (ssh's complaint, rsync's first error), not
    rsync's generic closing summary."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(
        ("rsync error:", "rsync: connection unexpectedly closed"))]
    return (useful or lines or [""])[0]


def sync(spec: FilesSync, *, checksum: bool = False) -> str:
    """Copy; `checksum` also catches same-size, same-mtime edits (slower)."""
    out = _rsync(rsync_cmd(spec, "--stats", *(["--checksum"] if checksum else [])))
    return _stat_line(out, "Number of regular files transferred") + " file(s) transferred"


@dataclass(frozen=True)
class FilesCheck:
    files: int
    differences: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.differences


def verify(spec: FilesSync) -> FilesCheck:
    """A dry run with --checksum: any itemized line is a file that differs."""
    out = _rsync(rsync_cmd(spec, "--checksum", "--dry-run", "--itemize-changes", "--stats"))
    diffs = tuple(line for line in out.splitlines() if _ITEM.match(line))
    files = int(_stat_line(out, "Number of files").split()[0].replace(",", "") or 0)
    return FilesCheck(files, diffs)


def _stat_line(out: str, label: str) -> str:
    for line in out.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    return "0"
