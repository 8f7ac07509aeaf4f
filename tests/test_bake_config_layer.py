"""The config layer on a small tree: the baked login user and its home."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder.bake import rootfs
from builder.bake import tree as tree_paths
from builder.bake.pipeline import image_own_files
from builder.errors import UserError
from builder.manifest import load_manifest
from tests.bake_fixture import SEED_MANIFEST


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    etc = tree / "etc"
    (etc / "skel").mkdir(parents=True)
    (etc / "skel/.bashrc").write_text("# skel bashrc\n")
    (etc / "skel/.profile").write_text("# skel profile\n")
    (etc / "skel/.config").mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nadm:x:4:\nsudo:x:27:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nadm:*::\nsudo:*::\n")
    (tree / "home").mkdir()
    return tree


def test_login_user_and_home_from_the_bakers_own_files(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    skel_bashrc = tree / "etc/skel/.bashrc"
    rootfs.write_config_layer(tree, image_own_files(load_manifest(SEED_MANIFEST)), ())
    entry = next(line.split(":") for line in (tree / "etc/passwd").read_text().splitlines()
                 if line.startswith("admin:"))
    assert entry[2:] == ["1000", "1000", "admin", "/home/admin", "/bin/bash"]
    members = {line.split(":")[0]: line.split(":")[3]
               for line in (tree / "etc/group").read_text().splitlines()}
    assert members["sudo"] == "admin" and members["adm"] == "admin"
    home = tree / "home/admin"
    st = home.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o700)
    assert (home / ".bashrc").read_text() == "# skel bashrc\n"
    assert (home / ".config").is_dir() and (home / ".profile").stat().st_uid == 1000
    # a copy, not a hard link: the tree's files may be shared with the layer cache
    assert not os.path.samefile(home / ".bashrc", skel_bashrc)
    assert skel_bashrc.stat().st_nlink == 1


def test_an_existing_home_is_left_alone(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "home/admin").mkdir()
    (tree / "home/admin/notes").write_text("mine\n")
    rootfs.write_config_layer(tree, image_own_files(load_manifest(SEED_MANIFEST)), ())
    assert sorted(p.name for p in (tree / "home/admin").iterdir()) == ["notes"]


# ------------------------------------------------- links that lead out of the tree


def _hostile_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A tree whose links point outside it: absolute (at a host directory and at
    the real /run) and relative past its root. Returns (tree, host directory)."""
    tree = _tree(tmp_path)
    host = tmp_path / "host"
    for sub in ("run", "private", "home", "etc"):
        (host / sub).mkdir(parents=True)
    (tree / "var").mkdir()
    (tree / "var/run").symlink_to(host / "run")                      # absolute, outside
    (tree / "usr/lib/ssl").mkdir(parents=True)
    (tree / "usr/lib/ssl/private").symlink_to(host / "private")      # absolute, outside
    (tree / "etc/ssl").mkdir()
    (tree / "etc/ssl/private").symlink_to("../../../host/etc")  # relative, past the root
    (tree / "etc/real-run").symlink_to("/run")                         # the host's own /run
    (tree / "home").rmdir()
    (tree / "home").symlink_to(host / "home")
    (tree / "etc/skel/.shadow").symlink_to("/etc/shadow")              # must stay a link
    return tree, host


def _snapshot(path: Path) -> list[tuple[str, int, int, int]]:
    return sorted((str(p), (st := p.lstat()).st_mtime_ns, st.st_uid, st.st_mode)
                  for p in [path, *path.rglob("*")])


def test_in_tree_resolves_links_as_a_chroot_would(tmp_path: Path) -> None:
    tree, host = _hostile_tree(tmp_path)
    inside = tree.joinpath(*host.parts[1:])
    assert tree_paths.in_tree(tree, "/var/run/x") == inside / "run/x"
    assert tree_paths.in_tree(tree, "/usr/lib/ssl/private/k") == inside / "private/k"
    assert tree_paths.in_tree(tree, "/etc/ssl/private/k") == tree / "host/etc/k"
    assert tree_paths.in_tree(tree, "/../../etc/passwd") == tree / "etc/passwd"
    assert tree_paths.in_tree(tree, "/etc/real-run/x") == tree / "run/x"
    # the last component itself is kept when it is what gets replaced
    assert tree_paths.in_tree(tree, "/var/run", follow_last=False) == tree / "var/run"
    (tree / "etc/loop").symlink_to("/etc/loop")
    with pytest.raises(UserError, match="too many levels"):
        tree_paths.in_tree(tree, "/etc/loop/x")


def test_the_config_layer_writes_nothing_outside_its_tree(tmp_path: Path) -> None:
    tree, host = _hostile_tree(tmp_path)
    before = _snapshot(host)
    run_dir = Path("/run") / f"amibake-escape-{os.getpid()}"
    files = [
        *image_own_files(load_manifest(SEED_MANIFEST)),
        rootfs.LayerFile("/var/run/amibake/flag", b"flag\n", 0o600),
        rootfs.LayerFile("/usr/lib/ssl/private/key.pem", b"key\n", 0o600),
        rootfs.LayerFile("/etc/ssl/private/other.pem", b"other\n", 0o640),
        rootfs.LayerFile(f"/etc/real-run/{run_dir.name}/x", b"x\n"),
    ]
    try:
        rootfs.write_config_layer(tree, files, ())
        assert not run_dir.exists()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert _snapshot(host) == before and not any(host.rglob("*.pem"))
    inside = tree.joinpath(*host.parts[1:])
    assert (inside / "run/amibake/flag").read_bytes() == b"flag\n"
    assert (inside / "private/key.pem").stat().st_mode & 0o777 == 0o600
    assert (tree / "host/etc/other.pem").stat().st_mode & 0o777 == 0o640
    assert (tree / "run" / run_dir.name / "x").read_bytes() == b"x\n"
    # the login user's home follows /home inside the tree; skel's link stays a link
    home = inside / "home/admin"
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (1000, 0o700)
    assert os.readlink(home / ".shadow") == "/etc/shadow"
    assert (home / ".shadow").lstat().st_uid == 1000
    assert Path("/etc/shadow").stat().st_uid == 0


def test_scrubbing_the_base_layer_stays_inside_its_tree(tmp_path: Path) -> None:
    tree, host = _hostile_tree(tmp_path)
    (host / "etc/machine-id").write_text("host-id\n")
    (host / "etc/ssh_host_ed25519_key").write_text("host key\n")
    (host / "etc/cloud-init.log").write_text("host log\n")
    (tree / "etc/ssh").symlink_to(host / "etc")
    (tree / "etc/machine-id").symlink_to(host / "etc/machine-id")
    (tree / "var/lib").mkdir()
    (tree / "var/lib/cloud").symlink_to(host / "etc")
    (tree / "var/log").symlink_to(host / "etc")
    before = _snapshot(host)
    rootfs._scrub_identity(tree)
    assert _snapshot(host) == before
    assert (tree / "etc/machine-id").read_text() == "" and not (tree / "var/lib/cloud").exists()
    assert (tree / "etc/hostname").read_text() == "localhost\n"
