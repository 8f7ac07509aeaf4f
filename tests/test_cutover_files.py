"""rsync pre-sync/final sync with --delete and the checksum verification pass."""

from __future__ import annotations

import shlex
from pathlib import Path

from builder.cutover import files
from builder.manifest.model import FilesSync
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import edit_keeping_size_and_mtime


def test_sync_delete_and_checksum_verify(uploads: tuple[Path, Path]) -> None:
    src, dst = uploads
    spec = FilesSync(source=str(src), destination=str(dst))
    assert not files.verify(spec).ok  # nothing copied yet
    files.sync(spec)
    check = files.verify(spec)
    assert check.ok and check.files >= 22
    # a file deleted on the old side is deleted on the new side by the final sync
    (src / "slip-000.pdf").unlink()
    (dst / "stray.tmp").write_text("left over")
    files.sync(spec)
    assert not (dst / "slip-000.pdf").exists() and not (dst / "stray.tmp").exists()
    assert files.verify(spec).ok


def test_verify_catches_same_size_same_mtime_edit(uploads: tuple[Path, Path]) -> None:
    """rsync's quick check (size + mtime) misses this; --checksum does not."""
    src, dst = uploads
    spec = FilesSync(source=str(src), destination=str(dst))
    files.sync(spec)
    target = dst / "slip-005.pdf"
    edit_keeping_size_and_mtime(target)
    check = files.verify(spec)
    assert not check.ok
    assert any("slip-005.pdf" in d for d in check.differences)
    files.sync(spec)
    assert not files.verify(spec).ok  # the quick check still skips it ...
    files.sync(spec, checksum=True)  # ... a --checksum sync does not
    assert files.verify(spec).ok


def test_ssh_transport_command() -> None:
    spec = FilesSync(source="deploy@192.0.2.10:/var/uploads", destination="/var/uploads/",
                     transport="ssh", ssh_options=("-o", "StrictHostKeyChecking=yes", "-p", "2222"))
    cmd = files.rsync_cmd(spec, "--checksum")
    assert cmd[:6] == ["rsync", "-aH", "--numeric-ids", "--delete", "--protect-args",
                       "--checksum"]
    e = cmd[cmd.index("-e") + 1]
    assert shlex.split(e) == ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                              "-p", "2222"]
    assert cmd[-3:] == ["--", "deploy@192.0.2.10:/var/uploads/", "/var/uploads/"]
