"""The base layer's mmdebstrap hooks: what the eatmydata hooks leave is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.bake import rootfs
from builder.errors import UserError

LIB = "usr/lib/x86_64-linux-gnu"


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for d in ("usr/bin", LIB, "var/lib/dpkg"):
        (tree / d).mkdir(parents=True)
    (tree / "usr/bin/dpkg").write_text("dpkg\n")
    (tree / "usr/bin/eatmydata").write_text("#!/bin/sh\n")
    (tree / LIB / "libeatmydata.so.1").write_text("elf\n")
    (tree / LIB / "libc.so.6").write_text("elf\n")
    (tree / "var/lib/dpkg/diversions").write_text("/usr/bin/foo\n/usr/bin/foo.real\n:\n")
    return tree


def test_leftovers_removed_unless_asked_for(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rootfs._drop_eatmydata(tree, ("systemd", "sudo"))
    assert not (tree / "usr/bin/eatmydata").exists()
    assert not (tree / LIB / "libeatmydata.so.1").exists()
    assert (tree / LIB / "libc.so.6").exists() and (tree / "usr/bin/dpkg").exists()


def test_kept_when_the_image_installs_them(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    rootfs._drop_eatmydata(tree, ("eatmydata", "libeatmydata1"))
    assert (tree / "usr/bin/eatmydata").exists()
    assert (tree / LIB / "libeatmydata.so.1").exists()


@pytest.mark.parametrize("left", ["file", "diversion"])
def test_dpkg_still_diverted_is_an_error(tmp_path: Path, left: str) -> None:
    tree = _tree(tmp_path)
    if left == "file":
        (tree / "usr/bin/dpkg.distrib").write_text("dpkg\n")
    else:
        (tree / "var/lib/dpkg/diversions").write_text("/usr/bin/dpkg\n/usr/bin/dpkg.distrib\n:\n")
    with pytest.raises(UserError, match="left dpkg diverted"):
        rootfs._drop_eatmydata(tree, ())


def test_hooks_are_part_of_the_base_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmdebstrap (Makefile) ships the hook directory, and it is one of the
    base layer's inputs: another hook directory is another base layer."""
    assert (rootfs.EATMYDATA_HOOKS / "extract.sh").is_file()
    assert (rootfs.EATMYDATA_HOOKS / "customize.sh").is_file()
    spec = rootfs.base_spec("debian", "bookworm", "x86_64", ["nginx"], [], ())
    key = spec.key()
    monkeypatch.setattr(rootfs, "EATMYDATA_HOOKS", Path("/elsewhere/eatmydata"))
    assert spec.key() != key


def test_scrub_removes_the_snakeoil_pair(tmp_path: Path) -> None:
    """ssl-cert's postinst made a TLS key at bake time: baked, it would be
    every instance's PostgreSQL key. The scrub removes it (the db role's
    setup makes the instance's own before pg_createcluster)."""
    tree = _tree(tmp_path)
    for rel in rootfs.SNAKEOIL:
        (tree / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel.lstrip("/")).write_text("shared\n")
    (tree / "etc/ssl/certs/ca-certificates.crt").write_text("CA\n")
    rootfs._scrub_identity(tree)
    assert not any((tree / rel.lstrip("/")).exists() for rel in rootfs.SNAKEOIL)
    assert (tree / "etc/ssl/certs/ca-certificates.crt").exists()
