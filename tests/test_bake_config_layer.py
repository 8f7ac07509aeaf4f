"""The config layer on a small tree: the baked login user and its home."""

from __future__ import annotations

import os
from pathlib import Path

from builder.bake import rootfs
from builder.bake.pipeline import image_own_files
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
