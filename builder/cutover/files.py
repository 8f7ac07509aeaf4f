"""Uploaded files: rsync pre-sync and final sync with --delete, locally or
over SSH, and a verification pass that compares checksums of every file.

Every rsync command is built by `rsync_cmd`, which checks the settings again
at run time with the manifest's own rules (builder.manifest.paths and
builder.manifest.ssh_options), whatever the loader let through: a source or
destination that is empty, `/`, a system directory or not absolute never
reaches `rsync --delete`, and ssh options outside the allow-list (ProxyCommand
and friends run local commands) never reach ssh. rsync gets --protect-args
(paths are not split or expanded by the remote shell) and `--` before them.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from builder.errors import UserError
from builder.manifest.model import FilesSync
from builder.manifest.paths import remote_path_reason
from builder.manifest.ssh_options import ssh_options_problem
from builder.proc import CommandError, run

_ITEM = re.compile(r"^(\*deleting|[<>ch.*][fdLDS][.+?cstpoguax]*)\s")


def check_spec(spec: FilesSync) -> None:
    """Refuse settings that must never reach rsync --delete or ssh."""
    for field, value in (("source", spec.source), ("destination", spec.destination)):
        reason = remote_path_reason(value)
        if reason:
            raise UserError(f"cutover.files.{field} {value[:80]!r}: {reason}",
                            hint="name the uploads directory itself, e.g. /srv/app/uploads "
                                 "or deploy@old-host:/srv/app/uploads")
    problem = ssh_options_problem(spec.ssh_options)
    if problem:
        raise UserError(f"cutover.files.ssh_options: {problem}",
                        hint="reach the host with -p/-i/-l and -o settings only")


def _ssh(spec: FilesSync) -> list[str]:
    return ["ssh", "-o", "BatchMode=yes", *spec.ssh_options]


def rsync_cmd(spec: FilesSync, *extra: str) -> list[str]:
    check_spec(spec)
    cmd = ["rsync", "-aH", "--numeric-ids", "--delete", "--protect-args", *extra]
    if spec.transport == "ssh":
        cmd += ["-e", shlex.join(_ssh(spec))]
    return [*cmd, "--", spec.source.rstrip("/") + "/", spec.destination.rstrip("/") + "/"]


def source_problem(spec: FilesSync) -> str:
    """Why the source directory cannot be read, or "" (pre-flight: asked
    before anything changes; over ssh with the same options rsync uses)."""
    check_spec(spec)
    host, sep, path = spec.source.partition(":")
    if spec.transport != "ssh" or not sep or host.startswith("/"):
        return "" if os.path.isdir(spec.source) else f"{spec.source} is not a directory here"
    try:
        run([*_ssh(spec), "--", host, f"test -d {shlex.quote(path)}"], capture=True, timeout=60)
    except CommandError as err:
        if err.returncode == 1:  # test's own "no"; ssh fails with 255
            return f"{path} is not a directory on {host}"
        return f"cannot reach {host}: {_reason(err.stderr) or err.message}"
    return ""


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
