"""The patched root filesystem equals mkfs -d of the whole tree, with real e2fsprogs.

A small base tree (modes, owners, setuid, hard links, short and long
symlinks, a fifo, a device, xattrs, a sparse file, a name with quotes) is
made into the cached image (mkfs -d). A checkout of it (`cp -a --link`, as a
bake's) is changed the way the layers change a tree: files replaced,
added and removed, hard links made and broken, a directory replaced by a file
and a file by a directory, a directory's mode and owner changed, hundreds of
entries in one directory. The cached image patched with the checkout's diff
(builder.bake.root_image, debugfs) is read back entry by entry and compared
with `mkfs.ext4 -d` of the checkout: type, mode, owner, size, content,
symlink target, xattrs, which names share an inode and the link counts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from builder.bake import disk, fs_patch, root_image
from builder.bake.cache import LayerCache
from builder.bake.tree_diff import diff_trees
from builder.disk_digest import BLOCK, block_digests, data_blocks, fd_digest, file_digest
from builder.errors import UserError

FS_UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"
OLD = 1_600_000_000  # older than disk.FS_TIME: kept as it is


def _write(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, *owner)
    path.chmod(mode)


def _base(root: Path) -> Path:
    base = root / "base"
    _write(base / "etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    _write(base / "etc/shadow", b"root:*::::::\n", 0o640, (0, 42))
    _write(base / "etc/nginx/nginx.conf", b"packaged\n")
    _write(base / "usr/bin/tool", b"\x7fELF" + bytes(5000), 0o755)
    _write(base / "usr/bin/su", b"setuid\n", 0o4755)
    os.link(base / "usr/bin/tool", base / "usr/bin/tool-alias")
    _write(base / "usr/lib/a.so", b"a" * 70000)
    os.link(base / "usr/lib/a.so", base / "usr/lib/a.so.1")
    os.symlink("a.so.1", base / "usr/lib/liba.so")
    os.symlink("/usr/lib/" + "x" * 80, base / "usr/lib/long-link")
    _write(base / "usr/share/doc/pkg/copyright", b"(c)\n")
    _write(base / "usr/share/doc/pkg/changelog.gz", b"\x1f\x8b" + bytes(100))
    _write(base / "usr/share/gcc/cc1", b"compiler" * 1000, 0o755)
    _write(base / "usr/share/gone/file", b"x")
    _write(base / "var/lib/dpkg/status", b"Package: base\n")
    _write(base / 'srv/odd name "quoted"', b"spaces and quotes\n")
    (base / "home/user").mkdir(parents=True)
    os.chown(base / "home/user", 1000, 1000)
    (base / "home/user").chmod(0o700)
    (base / "var/log/journal").mkdir(parents=True)
    (base / "var/log/journal").chmod(0o2755)
    os.setxattr(base / "var/log/journal", "user.kept", b"journal")
    os.setxattr(base / "usr/bin/su", "user.capability", b"\x01\x02")
    os.mkfifo(base / "var/fifo")
    os.mknod(base / "var/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with (base / "var/sparse").open("wb") as f:
        f.seek(3 << 20)
        f.write(b"end")
    (base / "usr/replaced-by-file").mkdir()
    _write(base / "usr/replaced-by-file/inner", b"inner")
    _write(base / "usr/replaced-by-dir", b"file")
    _old_times(base)
    return base


def _old_times(tree: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (OLD, OLD), follow_symlinks=False)


def _change(tree: Path) -> None:
    """What the config layer, the app layer and the purge do to a checkout."""
    (tree / "etc/nginx/nginx.conf").unlink()  # replace, never write into
    _write(tree / "etc/nginx/nginx.conf", b"rendered\n", 0o640, (0, 33))
    (tree / "etc/passwd").unlink()
    _write(tree / "etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:999:999::/srv:/bin/false\n")
    _write(tree / "etc/amibake/roles.json", b'{"roles": []}\n', 0o600)
    (tree / "etc/amibake").chmod(0o750)
    os.symlink("/etc/amibake/roles.json", tree / "etc/roles")
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool-third")  # a link to an unchanged file
    (tree / "usr/lib/a.so.1").unlink()  # one link of a pair goes
    shutil.rmtree(tree / "usr/share/gcc")  # the purge
    shutil.rmtree(tree / "usr/share/gone")
    (tree / "usr/share/doc/pkg/copyright").unlink()
    (tree / "var/lib/dpkg/status").unlink()
    _write(tree / "var/lib/dpkg/status", b"Package: base\nStatus: purged\n")
    shutil.rmtree(tree / "usr/replaced-by-file")
    _write(tree / "usr/replaced-by-file", b"now a file")
    (tree / "usr/replaced-by-dir").unlink()
    _write(tree / "usr/replaced-by-dir/child", b"now a dir")
    os.chown(tree / "home/user", 1001, 1001)
    (tree / "home/user").chmod(0o750)
    _write(tree / "home/user/.profile", b"# profile\n", 0o644, (1001, 1001))
    os.removexattr(tree / "var/log/journal", "user.kept")
    os.setxattr(tree / "var/log/journal", "user.added", b"new")
    app = tree / "srv/app"
    for i in range(400):  # more entries than one directory block holds
        _write(app / "public" / f"asset-{i:04d}-{'x' * 40}.css", f"body{{}}/*{i}*/".encode())
    _write(app / "bin/rails", b"#!/usr/bin/ruby\n", 0o755)
    os.link(app / "bin/rails", app / "bin/rake")  # a new pair of hard links
    os.symlink("../public", app / "bin/public")
    with (app / "big.bin").open("wb") as f:
        f.write(bytes(range(256)) * 4096)
        f.seek(8 << 20)
        f.write(b"sparse tail")
    os.setxattr(app / "bin/rails", "user.mime_type", b"text/x-ruby")
    os.mkfifo(app / "fifo")
    (app / "public").chmod(0o2775)
    os.utime(app / "bin/rails", (OLD + 5, OLD + 5))  # an old time is kept


def _checkout(base: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", "--link", base, dest], check=True)
    return dest


def _q(path: str) -> str:
    return fs_patch.quote(path).decode()


def _debugfs(target: str, commands: list[str]) -> str:
    script = "\n".join(commands) + "\n"
    return subprocess.run(["debugfs", "-f", "-", target], input=script, check=True,
                          capture_output=True, text=True).stdout


def _listing(target: str, dump_dir: Path) -> dict[str, dict[str, object]]:
    """Every entry of the filesystem: its inode's attributes, content and xattrs."""
    entries: dict[str, dict[str, object]] = {}
    pending = ["/"]
    while pending:
        out = _debugfs(target, [f"ls -p {_q(d)}" for d in pending])
        pending_names, pending = pending, []
        current = ""
        for line in out.splitlines():
            if line.startswith("debugfs: ls -p "):
                current = pending_names.pop(0).rstrip("/")
                continue
            m = re.fullmatch(r"/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/", line)
            if not m or m[5] in (".", "..", "lost+found"):
                continue
            path = f"{current}/{m[5]}"
            mode = int(m[2], 8)
            entries[path] = {"ino": int(m[1]), "mode": mode, "uid": int(m[3]),
                             "gid": int(m[4]), "size": m[6]}
            if stat.S_ISDIR(mode):
                pending.append(path)
    paths = sorted(entries)
    commands = []
    for n, path in enumerate(paths):
        commands += [f"stat {_q(path)}", f"ea_list {_q(path)}"]
        mode = int(entries[path]["mode"])  # type: ignore[call-overload]
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):  # a slow link's target is its data
            commands.append(f"dump {_q(path)} {dump_dir}/{n}")
    out = _debugfs(target, commands)
    blocks = re.split(r"^debugfs: stat ", out, flags=re.M)[1:]
    for n, (path, block) in enumerate(zip(paths, blocks, strict=True)):
        e = entries[path]
        e["links"] = int(re.search(r"Links: (\d+)", block)[1])  # type: ignore[index]
        e["mtime"] = re.search(r" mtime: (0x[0-9a-f]+:[0-9a-f]+)", block)[1]  # type: ignore[index]
        e["xattrs"] = block.split("debugfs: ea_list", 1)[1].split("\n", 1)[1] \
            .split("debugfs: dump", 1)[0].strip()
        link = re.search(r'Fast link dest: "(.*)"', block)
        if link:
            e["target"] = link[1]
        dumped = dump_dir / str(n)
        if dumped.exists():
            e["sha256"] = hashlib.sha256(dumped.read_bytes()).hexdigest()
    return entries


def _compare_view(entries: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """The listing without inode numbers, with the names that share an inode instead."""
    by_ino: dict[object, list[str]] = {}
    for path, e in entries.items():
        by_ino.setdefault(e["ino"], []).append(path)
    return {path: {**{k: v for k, v in e.items() if k != "ino"},
                   "same_inode": sorted(by_ino[e["ino"]])} for path, e in entries.items()}


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Path, Path, dict[str, object]]:
    base = _base(tmp_path)
    spec = root_image.RootFsSpec("k" * 64, FS_UUID, "amibake-root")
    image, meta, made = root_image.cached_image(LayerCache(tmp_path / "cache"), spec, base)
    assert made
    return base, image, meta


def _patched(cached: tuple[Path, Path, dict[str, object]], tree: Path,
             scratch: Path) -> root_image.WorkingImage:
    base, image, meta = cached
    work = root_image.WorkingImage(image, meta)
    work.patch(diff_trees(tree, base), tree, scratch)
    return work


def test_patched_image_equals_mkfs_of_the_whole_tree(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]]) -> None:
    base, image, _ = cached
    tree = _checkout(base, tmp_path / "tree")
    _change(tree)
    reference = tmp_path / "reference.ext4"
    disk.make_root_fs(reference, tree, image.stat().st_size, FS_UUID, "amibake-root")
    work = _patched(cached, tree, tmp_path / "scratch")
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        got = _compare_view(_listing(work.path, tmp_path / "a"))
        want = _compare_view(_listing(str(reference), tmp_path / "b"))
        fsck = subprocess.run(["e2fsck", "-fn", work.path], capture_output=True, text=True)
        image_bytes = Path(work.path).read_bytes()
        allocated = os.fstat(work.fd).st_blocks * 512
    finally:
        work.close()
    # the blocks of removed files are punched out: their bytes are gone from
    # the image, which takes about the space mkfs -d's does
    assert b"compiler" * 8 not in image_bytes
    assert allocated <= reference.stat().st_blocks * 512 + (1 << 20)
    assert fsck.returncode == 0, fsck.stdout
    assert sorted(got) == sorted(want)
    for path in want:
        mine, theirs = dict(got[path]), dict(want[path])
        # mkfs -d copies the tree's times; the patch clamps them to FS_TIME
        # (the files the bake wrote) and the reference has the bake's own.
        if mine.pop("mtime") != theirs.pop("mtime"):
            assert int(str(got[path]["mtime"]).split(":")[0], 16) == disk.FS_TIME, path
        assert mine == theirs, path
    # what the checks above rely on is really there
    assert got["/usr/bin/tool-third"]["same_inode"] == [
        "/usr/bin/tool", "/usr/bin/tool-alias", "/usr/bin/tool-third"]
    assert got["/usr/bin/tool"]["links"] == 3 and got["/usr/lib/a.so"]["links"] == 1
    assert got["/srv/app/bin/rake"]["same_inode"] == ["/srv/app/bin/rails", "/srv/app/bin/rake"]
    assert "user.mime_type" in str(got["/srv/app/bin/rails"]["xattrs"])
    assert "user.added" in str(got["/var/log/journal"]["xattrs"])
    assert "user.kept" not in str(got["/var/log/journal"]["xattrs"])
    assert got["/etc/nginx/nginx.conf"]["gid"] == 33
    assert got["/usr/bin/su"]["mode"] == 0o104755
    assert got["/usr/replaced-by-dir"]["mode"] == 0o40755
    assert "/usr/share/gcc" not in got and "/usr/share/doc/pkg/copyright" not in got
    assert got["/srv/app/bin/rails"]["mtime"] == f"0x{OLD + 5:x}:00000000"
    assert got["/usr/lib/long-link"]["sha256"] == hashlib.sha256(
        b"/usr/lib/" + b"x" * 80).hexdigest()
    assert stat.S_ISFIFO(int(got["/srv/app/fifo"]["mode"]))  # type: ignore[call-overload]


def test_equal_changes_give_an_equal_filesystem(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]]) -> None:
    """Two bakes making the same changes at different times: byte-equal images."""
    digests = []
    for n in range(2):
        tree = _checkout(cached[0], tmp_path / f"tree{n}")
        _change(tree)
        work = _patched(cached, tree, tmp_path / f"scratch{n}")
        try:
            digests.append(file_digest(Path(work.path)))
        finally:
            work.close()
    assert digests[0] == digests[1]


def test_no_change_leaves_the_image_as_cached(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]]) -> None:
    base, image, _ = cached
    tree = _checkout(base, tmp_path / "tree")
    assert not diff_trees(tree, base)
    work = _patched(cached, tree, tmp_path / "scratch")
    try:
        assert file_digest(Path(work.path)) == file_digest(image)
    finally:
        work.close()


def test_growing_makes_room_for_a_large_app_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(root_image, "LAYER_ROOM", 0)  # the smallest image that can be
    base = _base(tmp_path)
    spec = root_image.RootFsSpec("g" * 64, FS_UUID, "amibake-root")
    image, meta, _ = root_image.cached_image(LayerCache(tmp_path / "cache"), spec, base)
    size = image.stat().st_size
    tree = _checkout(base, tmp_path / "tree")
    written = 0
    with (tree / "srv/huge").open("wb") as f:  # until the sizing rule asks for more
        while disk.root_fs_size(int(str(meta["used"])) + written,
                                int(str(meta["inodes"])) + 1) <= size:
            f.write(bytes(range(256)) * (16 << 10))
            written += 4 << 20
    diff = diff_trees(tree, base)
    work = root_image.WorkingImage(image, meta)
    try:
        needed = work.needed_size(diff)
        assert needed > size
        work.grow(needed)
        work.patch(diff, tree, tmp_path / "scratch")
        out = _debugfs(work.path, ["stat /srv/huge"])
        assert f"Size: {written}" in out
        assert os.fstat(work.fd).st_size == needed
        digests, _ = _into_disk(image, work, tmp_path / "disk.raw", 0)
        assert digests == block_digests(work.fd, work.size)  # past the cached image too
        assert subprocess.run(["e2fsck", "-fn", work.path], capture_output=True).returncode == 0
    finally:
        work.close()


def _into_disk(image: Path, work: root_image.WorkingImage, disk_path: Path,
               offset: int) -> tuple[list[bytes], int]:
    """As a bake does: the cached image into a fresh disk file at `offset`, then
    the working image over it; (the root's block digests, the disk's size)."""
    size = offset + work.size + 4 * BLOCK
    fd = os.open(disk_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, b"GPT!", 0)
        changed = work.changes(image)
        root_image.place_cached(image, fd, offset)
        work.write_into(fd, offset, changed)
        digests = root_image.root_digests(root_image.cached_block_digests(image), changed,
                                          work.size)
        known = {offset // BLOCK + i: d for i, d in enumerate(digests)}
        assert fd_digest(fd, known) == file_digest(disk_path)  # what a bake records
    finally:
        os.close(fd)
    return digests, size


def test_the_disk_gets_the_patched_image_and_only_its_changed_blocks_are_hashed(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    base, image, _ = cached
    tree = _checkout(base, tmp_path / "tree")
    _change(tree)
    work = _patched(cached, tree, tmp_path / "scratch")
    hashed: list[bytes] = []

    class Counting:
        @staticmethod
        def sha256(data: bytes) -> hashlib._Hash:
            hashed.append(bytes(data))
            return hashlib.sha256(data)

    monkeypatch.setattr(root_image, "hashlib", Counting)
    try:
        offset = 8 * BLOCK
        digests, size = _into_disk(image, work, tmp_path / "disk.raw", offset)
        with (tmp_path / "disk.raw").open("rb") as f:
            f.seek(offset)
            assert f.read(work.size) == os.pread(work.fd, work.size, 0)
        assert digests == block_digests(work.fd, work.size)
        old = image.read_bytes()
        new = os.pread(work.fd, work.size, 0)
        changed = [i for i in range(work.size // BLOCK)
                   if new[i * BLOCK:(i + 1) * BLOCK] != old[i * BLOCK:(i + 1) * BLOCK]
                   and any(new[i * BLOCK:(i + 1) * BLOCK])]
        assert changed and len(hashed) == len(changed)  # the changed blocks, once each
        assert len(changed) < len(data_blocks(work.fd, work.size))
    finally:
        work.close()


def test_a_block_of_zeros_is_a_hole_and_hashes_as_written_zeros(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]]) -> None:
    """A removed file's freed blocks are punched out of the working image: in the
    disk they become holes again, with the digest of the zeros they read as."""
    base, image, _ = cached
    tree = _checkout(base, tmp_path / "tree")
    (tree / "usr/share/gcc/cc1").unlink()
    (tree / "var/sparse").unlink()  # its data block goes; the block must read as zeros
    work = _patched(cached, tree, tmp_path / "scratch")
    try:
        digests, _ = _into_disk(image, work, tmp_path / "disk.raw", 0)
        assert digests == block_digests(work.fd, work.size)
        zero = tmp_path / "zeros"
        zero.write_bytes(bytes(work.size))  # written zeros, not holes
        assert file_digest(zero) != file_digest(Path(work.path))
        holes = tmp_path / "holes"
        with holes.open("wb") as f:
            f.truncate(work.size)
        assert file_digest(zero) == file_digest(holes)
    finally:
        work.close()


def test_stale_cached_block_digests_are_taken_again(
        tmp_path: Path, cached: tuple[Path, Path, dict[str, object]]) -> None:
    """<key>.blocks names the image file it was taken of: after the image changed
    (here one byte of a block the patch leaves alone), its digests are taken
    again, and the disk's digest is that of its bytes."""
    base, image, _ = cached
    first = root_image.cached_block_digests(image)
    assert image.with_suffix(root_image.BLOCKS_SUFFIX).is_file()
    assert root_image.cached_block_digests(image) == first  # kept, not taken again
    data = [i for i, d in enumerate(first) if d != first[-1]]
    with image.open("r+b") as f:
        f.seek(data[-1] * BLOCK + 100)
        old = f.read(1)
        f.seek(data[-1] * BLOCK + 100)
        f.write(bytes([old[0] ^ 0xFF]))
    again = root_image.cached_block_digests(image)
    assert again != first and again == _digests_of(image)
    tree = _checkout(base, tmp_path / "tree")
    work = _patched(cached, tree, tmp_path / "scratch")
    try:
        digests, _ = _into_disk(image, work, tmp_path / "disk.raw", 0)
        assert digests == block_digests(work.fd, work.size)
    finally:
        work.close()


def _digests_of(path: Path) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return block_digests(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_a_debugfs_error_fails_the_patch(tmp_path: Path) -> None:
    img = tmp_path / "fs.ext4"
    (tmp_path / "empty").mkdir()
    disk.make_root_fs(img, tmp_path / "empty", 64 << 20, FS_UUID, "t")
    script = tmp_path / "script"
    script.write_bytes(fs_patch.quote("rm").strip(b'"') + b' "/no/such/file"\n')
    with pytest.raises(UserError, match="debugfs failed: rm: File not found"):
        fs_patch.apply_patch(str(img), script)


def test_a_line_break_in_a_name_is_refused() -> None:
    assert fs_patch.quote('a "b" c') == b'"a ""b"" c"'
    with pytest.raises(UserError, match="line break"):
        fs_patch.quote("bad\nname")
