"""The cutover's SSH transports against a real OpenSSH server on loopback:
rsync pre-sync / final sync / checksum pass with FilesSync transport `ssh`,
and the maintenance switch on the old web server over SSH (cutover.old_web)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from builder.cutover import files, maintenance, verify
from builder.cutover.config import TsigKey, derive
from builder.errors import UserError
from builder.manifest.model import FilesSync
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    SERVER_NAME,
    SUPER_PASSWORD,
    Cluster,
    Knot,
    Site,
    Sshd,
    cutover_manifest,
    edit_keeping_size_and_mtime,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _logins(server: Sshd) -> int:
    return server.log.count(f"Accepted publickey for {server.user} from {server.host}")


def test_presync_final_sync_and_checksum_pass_over_ssh(uploads: tuple[Path, Path],
                                                       sshd: Sshd) -> None:
    src, dst = uploads
    spec = FilesSync(source=sshd.remote(src), destination=str(dst), transport="ssh",
                     ssh_options=sshd.options)
    assert not files.verify(spec).ok  # nothing copied yet
    # pre-sync
    assert files.sync(spec) == "21 file(s) transferred"
    assert _tree(dst) == _tree(src) and len(_tree(dst)) == 21
    check = files.verify(spec)
    assert check.ok and check.files >= 22
    # final sync: a file deleted on the old side goes, and so does a stray one
    (src / "slip-000.pdf").unlink()
    (src / "slip-001.pdf").write_bytes(b"edited after the pre-sync")
    (dst / "stray.tmp").write_text("left over")
    files.sync(spec)
    assert not (dst / "slip-000.pdf").exists() and not (dst / "stray.tmp").exists()
    assert (dst / "slip-001.pdf").read_bytes() == b"edited after the pre-sync"
    assert _tree(dst) == _tree(src)
    assert files.verify(spec).ok
    # a same-size, same-mtime edit: only the checksum pass sees it
    target = dst / "slip-005.pdf"
    edit_keeping_size_and_mtime(target)
    check = files.verify(spec)
    assert not check.ok and [d for d in check.differences if "slip-005.pdf" in d]
    files.sync(spec)
    assert not files.verify(spec).ok  # the quick check skips it ...
    files.sync(spec, checksum=True)  # ... a --checksum sync does not
    assert files.verify(spec).ok and _tree(dst) == _tree(src)
    # every rsync above really went through this sshd
    assert _logins(sshd) == 10


def test_sync_pushes_to_a_remote_destination(uploads: tuple[Path, Path], sshd: Sshd) -> None:
    src, dst = uploads
    spec = FilesSync(source=str(src), destination=sshd.remote(dst), transport="ssh",
                     ssh_options=sshd.options)
    files.sync(spec)
    assert _tree(dst) == _tree(src)
    assert files.verify(spec).ok
    assert _logins(sshd) == 2


def test_refused_key_and_missing_path_are_user_errors(uploads: tuple[Path, Path],
                                                  sshd: Sshd) -> None:
    src, dst = uploads
    other = sshd.identity.with_name("host_key")  # a key sshd does not authorize
    opts = tuple(str(other) if o == str(sshd.identity) else o for o in sshd.options)
    spec = FilesSync(source=sshd.remote(src), destination=str(dst), transport="ssh",
                     ssh_options=opts)
    with pytest.raises(UserError, match="rsync failed") as err:
        files.sync(spec)
    assert err.value.message == f"rsync failed: {sshd.login}: Permission denied (publickey)."
    assert not dst.exists() or not any(dst.iterdir())
    # with the right key, a missing remote directory is named by rsync's own error
    spec = replace(spec, source=sshd.remote(src / "missing"), ssh_options=sshd.options)
    with pytest.raises(UserError, match="rsync failed: rsync: .*missing.*No such file") as err:
        files.sync(spec)


def test_maintenance_switch_over_ssh(sites: tuple[Site, Site], sshd: Sshd) -> None:
    site = sites[0]
    # the switch touches neither the databases nor DNS: their endpoints are
    # placeholders that are never contacted
    idle = Cluster("unused", Path("/nonexistent"), 9)
    knot = Knot(Path("/nonexistent"), 9, TsigKey("k.", "hmac-sha256", "AAAA"))
    m = cutover_manifest(idle, idle, knot, sites, window_start="2026-12-06T00:00:00-05:00",
                         window_minutes=30, old_web=f"ssh:{sshd.login}",
                         old_web_ssh_options=sshd.options)
    env = {"AMIBAKE_SECRET_TEST_OLD_DB": SUPER_PASSWORD,
           "AMIBAKE_SECRET_TEST_NEW_DB": SUPER_PASSWORD,
           "AMIBAKE_SECRET_TEST_TSIG": "k.:hmac-sha256:AAAA"}
    cfg = derive(m, environ=env)
    assert verify.fetch(site.url, "/", SERVER_NAME)[0] == 200

    # a key the old server refuses: a UserError, and the site stays up
    assert m.cutover is not None
    bad = derive(replace(m, cutover=replace(m.cutover, old_web_ssh_options=tuple(
        str(sshd.identity.with_name("host_key")) if o == str(sshd.identity) else o
        for o in sshd.options))), environ=env)
    with pytest.raises(UserError, match=f"maintenance switch on {sshd.login} failed"):
        maintenance.switch(bad, True)
    assert not site.flag.exists()
    assert verify.fetch(site.url, "/", SERVER_NAME)[0] == 200

    assert maintenance.switch(cfg, True).startswith("maintenance on")
    maintenance.switch(cfg, True)  # idempotent
    assert site.flag.exists()
    assert site.page.read_text() == maintenance.render_page(cfg)
    for path in ("/", "/health", "/employees"):
        status, headers, body = verify.fetch(site.url, path, SERVER_NAME)
        assert status == 503 and headers["retry-after"] == "300"
        assert "Pat Doe, support@example.com" in body.decode()
    maintenance.switch(cfg, False)
    maintenance.switch(cfg, False)  # idempotent
    assert not site.flag.exists()
    status, _, body = verify.fetch(site.url, "/", SERVER_NAME)
    assert status == 200 and b"old server" in body
    assert _logins(sshd) == 4  # the refused attempt never logged in


def test_source_preflight_over_ssh(uploads: tuple[Path, Path], sshd: Sshd) -> None:
    """Pre-flight asks the old host itself, with rsync's ssh options."""
    src, dst = uploads
    spec = FilesSync(source=sshd.remote(src), destination=str(dst), transport="ssh",
                     ssh_options=sshd.options)
    assert files.source_problem(spec) == ""
    missing = replace(spec, source=sshd.remote(src / "missing"))
    assert files.source_problem(missing) == f"{src / 'missing'} is not a directory on " \
                                            f"{sshd.login}"
    other = sshd.identity.with_name("host_key")  # a key sshd does not authorize
    refused = replace(spec, ssh_options=tuple(
        str(other) if o == str(sshd.identity) else o for o in sshd.options))
    assert files.source_problem(refused) == \
        f"cannot reach {sshd.login}: {sshd.login}: Permission denied (publickey)."
    assert not dst.exists() or not any(dst.iterdir())
