"""The bake: manifest → cached layers → bootable disk → boot test → local store.

    recipe    render the image content, compute every input's digest (cheap)
    check     same version stored with the same inputs → nothing to do;
              with other inputs → refused unless --force
    base      the base layer from the cache, or mmdebstrap (then cached)
    app       resolve `app.code` (builder.app.source) before the check: its tree
              digest is an input; after the config layer, the app layer
              (builder.bake.app_layer: cached on the tree digest, built on a miss)
    config    the rendered files of every baked role, written into the tree
    rootfs    the base layer's root ext4 (cached: mkfs -d of the cached tree
              once, copied into memory beside the layers), patched with
              what the layers changed (builder.bake.root_image: the checkout
              compared with the cached tree, one debugfs run)
    disk      the cached root fs is copied into the disk beside the layers; the
              patched one's changed blocks go over it; GPT, ESP (mtools, built
              beside the layers), GRUB for UEFI and BIOS; the disk's digest
              (builder.disk_digest) reads only the blocks the bake wrote, the
              cached root fs's block digests are kept beside it
    test      boot the disk in every role (builder.vm), before anything is kept
    store     image.json, then one rename into images/<name>/<version>/

Scratch space lives in an ExitStack; the store entry is staged beside its
destination, so any failure (a command, a boot test, Ctrl-C) leaves nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builder import __version__
from builder.app.source import AppSource, resolve
from builder.bake import bootloader, disk, rootfs
from builder.bake.app_layer import AppLayer, app_layer_for, write_app_layer
from builder.bake.bakeable import check_bakeable
from builder.bake.cache import LayerCache
from builder.bake.packages import dpkg_packages
from builder.bake.purge_cache import purge
from builder.bake.root_image import (
    RootFsSpec,
    WorkingImage,
    cached_block_digests,
    cached_image,
    place_cached,
    root_digests,
)
from builder.bake.sources import DEFAULT_APT_DIR, host_sources
from builder.bake.tree import replace_file, set_owner_mode
from builder.bake.tree_diff import diff_trees
from builder.disk_digest import BLOCK, fd_digest
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.store import DISK_FILE, DiskInfo, Store, StoredImage

#: Part of the disk input digest: bump when the disk layout or GRUB setup changes.
DISK_CODE_VERSION = "disk-3"

Say = Callable[[str], None]


@dataclass(frozen=True)
class BakeOptions:
    store_root: Path
    cache_dir: Path
    force: bool = False
    skip_boot_test: bool = False
    apt_dir: Path = DEFAULT_APT_DIR
    allow_dirty: bool = False


@dataclass(frozen=True)
class BakeRecipe:
    """Everything decided before any heavy work: the inputs and their digests."""

    manifest: Manifest
    roles: tuple[str, ...]
    base: rootfs.BaseSpec
    files: tuple[rootfs.LayerFile, ...]
    services: tuple[str, ...]
    inputs: dict[str, str]
    inputs_digest: str
    app: AppSource = AppSource(kind="sample")
    app_layer: AppLayer | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return str(self.manifest.version)

    @property
    def image_id(self) -> str:
        seed = f"{self.name}\0{self.version}\0{self.inputs_digest}"
        return "img-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class BakeResult:
    image: StoredImage
    action: Literal["built", "unchanged", "replaced"]
    base_cached: bool
    seconds: dict[str, float] = field(default_factory=dict)
    #: None: no app layer (sample/none); else whether it came from the cache
    app_cached: bool | None = None


def with_roles(manifest: Manifest, roles: Sequence[str] | None) -> Manifest:
    """The manifest with `image.roles` set to `roles` (checked against `roles:`)."""
    if not roles:
        return manifest
    unknown = [r for r in roles if r not in manifest.roles]
    if unknown:
        raise UserError(
            f"unknown role(s) {', '.join(unknown)} in --roles",
            hint=f"roles of {manifest.source}: {', '.join(manifest.roles)}",
        )
    image = dataclasses.replace(manifest.image, roles=tuple(dict.fromkeys(roles)))
    return dataclasses.replace(manifest, image=image)


LOGIN_USER_UID = 1000


def image_own_files(manifest: Manifest) -> tuple[rootfs.LayerFile, ...]:
    """What the baker itself adds to an image (the renderers write the rest).

    The login user is baked (a sysusers.d entry; the config layer creates it
    and its home): it is static, and the dispatcher, which runs in parallel
    with cloud-init.service at first boot, installs the instance's key for it.
    cloud-init's users module finds it there, leaves it, locks its password
    and writes its sudo rule. The cloud-init settings name it the default user.
    """
    user = manifest.image.login_user
    cloud_cfg = f"""\
# amibake: the image's login user (gets the instance's SSH key) and modules
# this image has no use for.
system_info:
  default_user:
    name: {user}
    lock_passwd: true
    gecos: {user}
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
grub_dpkg:
  enabled: false
"""
    sysusers = f"""\
# amibake: the image's login user, baked so that it exists from the first
# moment of the first boot; cloud-init gives it the sudo rule.
u {user} {LOGIN_USER_UID} "{user}" /home/{user} /bin/bash
m {user} adm
m {user} sudo
"""
    return (
        rootfs.LayerFile("/etc/cloud/cloud.cfg.d/91_amibake-image.cfg", cloud_cfg.encode()),
        rootfs.LayerFile("/usr/lib/sysusers.d/amibake-login.conf", sysusers.encode()),
    )


def _roles_json_services(files: Sequence[rootfs.LayerFile]) -> tuple[str, ...]:
    for f in files:
        if f.path == "/etc/amibake/roles.json":
            return tuple(json.loads(f.content).get("all_services", ()))
    return ()


def _digest(doc: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def recipe_for(manifest: Manifest, apt_dir: Path = DEFAULT_APT_DIR,
               app: AppSource | None = None) -> BakeRecipe:
    """Render the image's content and digest every input; no heavy work.

    `app` is the resolved `app.code` (builder.app.source.resolve); without it
    the team's own code is resolved here only to digest it.
    """
    from builder.render import image_content

    if app is None:
        with tempfile.TemporaryDirectory(prefix="amibake-app-") as scratch:
            app = dataclasses.replace(resolve(manifest, Path(scratch) / "app",
                                              allow_dirty=True), tree=None)

    content = image_content(manifest)
    files = [rootfs.LayerFile(f.path, f.content, f.mode, f.owner) for f in content.files]
    for own in image_own_files(manifest):
        if any(f.path == own.path for f in files):
            raise UserError(f"the renderer and the baker both write {own.path}")
        files.append(own)
    spec = manifest.image
    base = rootfs.base_spec(
        spec.distro, spec.release, spec.architecture,
        content.packages, spec.packages, host_sources(spec.release, apt_dir),
    )
    services = _roles_json_services(files)
    inputs = {
        "base_layer": "sha256:" + base.key(),
        "config_layer": "sha256:" + rootfs.config_key(files, content.packages),
        "disk": _digest({
            "code": DISK_CODE_VERSION,
            "volume_size_gib": spec.volume_size_gib,
            "boot_mode": spec.boot_mode,
            "efi_modules": bootloader.EFI_MODULES,
            "bios_modules": bootloader.BIOS_MODULES,
        }),
        "roles": _digest(list(manifest.baked_roles)),
    }
    layer = None
    if app.own:
        inputs["app"] = _digest({k: v for k, v in app.as_json().items()
                                 if k in ("code", "commit", "tarball_sha256", "tree_digest")})
        layer = app_layer_for(manifest, app, files)
        inputs["app_layer"] = "sha256:" + layer.key(base.key())
    return BakeRecipe(
        manifest=manifest,
        roles=tuple(manifest.baked_roles),
        base=base,
        files=tuple(files),
        services=services,
        inputs=inputs,
        inputs_digest=_digest(inputs),
        app=app,
        app_layer=layer,
    )


class _Timer:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str, text: str) -> Iterator[None]:
        self.say(f"{text}...")
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - start, 2)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """A part of a step, timed on its own (not said)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - start, 2)


def boot_test_disk(disk_path: Path, manifest: Manifest, roles: Sequence[str],
                   workdir: Path) -> list[dict[str, Any]]:
    """builder.vm's boot tests, as image.json records; UserError when a role fails."""
    from builder.vm.boottest import run_boot_tests

    return [r.as_json() for r in run_boot_tests(disk_path, manifest, roles, workdir=workdir)]


def bake(manifest: Manifest, options: BakeOptions, say: Say) -> BakeResult:
    """Bake `manifest` into the store at options.store_root; see the module doc."""
    check_bakeable(manifest)
    cache = LayerCache(options.cache_dir)
    timer = _Timer(say)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(cache.workdir())
        app = resolve(manifest, work / "app", allow_dirty=options.allow_dirty)
        recipe = recipe_for(manifest, options.apt_dir, app)
        store = Store(options.store_root)
        existing = store.find(recipe.name, recipe.version)
        if existing is not None and not options.force and \
                existing.inputs_digest == recipe.inputs_digest:
            return BakeResult(existing, "unchanged", base_cached=True)
        if existing is not None and not options.force:
            raise UserError(
                f"{recipe.name} {recipe.version} is already stored with different inputs "
                f"({existing.dir})",
                hint="bump the version (--bump patch) or rebuild it with --force",
            )
        staged = stack.enter_context(store.staging(recipe.name, recipe.version))
        tree = work / "tree"
        key = recipe.base.key()
        entry = cache.lookup(key)
        base_cached = entry is not None
        if entry is None:
            building = cache.staging_tree(key)
            stack.callback(rootfs.remove_build_tree, building)
            with timer.step("base", f"building the base layer {key[:12]} "
                            f"({len(recipe.base.packages)} packages, mmdebstrap)"):
                phases = rootfs.build_base(recipe.base, building, work / "hooks")
            timer.seconds.update({f"base.{name}": s for name, s in phases.items()})
            with timer.step("cache", "caching the base layer"):
                entry = cache.store(key, building, base_meta(recipe.base, building))
        root_uuid = recipe.base.root_uuid()
        disk_path = staged / DISK_FILE
        disk_fd = _open_disk(stack, disk_path, manifest.image.volume_size_gib * disk.GIB)
        # Beside the layers (2 cores): the base layer's root filesystem (cached, or
        # made from the cached tree) copied into memory (then into the disk), and
        # the boot loaders. Later: the package list beside the root fs. The pool is
        # left (waiting for its work) before the working image and the disk are
        # closed and the staged image removed on a failure.
        opened: list[WorkingImage] = []
        stack.callback(_close_all, opened)
        beside = stack.enter_context(ThreadPoolExecutor(max_workers=4))
        with timer.step("checkout", f"base layer {key[:12]} from the cache"):
            base_tree = cache.unpacked(entry)
            cached_fs = beside.submit(_cached_image, cache, key, root_uuid, base_tree, timer)
            root_fs = beside.submit(_open_root_fs, cached_fs, opened)
            loaders = beside.submit(build_boot_loaders, work, recipe, root_uuid)
            cache.checkout(entry, tree)
        # into the disk once the checkout is made (the copy and the checkout's
        # links slowed each other: both write to the filesystem of the cache)
        in_disk = beside.submit(_place_cached, cached_fs, disk_fd, timer)
        with timer.step("config", f"writing {len(recipe.files)} rendered files "
                        f"(roles: {', '.join(recipe.roles)})"):
            rootfs.write_config_layer(tree, recipe.files, recipe.services)
            kernel = rootfs.kernel_version(tree)
            replace_file(tree, "/boot/grub/grub.cfg",
                         bootloader.grub_cfg(kernel, root_uuid).encode())
            set_owner_mode(tree, "/boot/grub/grub.cfg", 0, 0, 0o644)
        app_cached = None
        if recipe.app_layer is not None:
            app_cached = _app_layer(tree, recipe.app_layer, manifest, key, cache, timer, work)
        packages = beside.submit(dpkg_packages, tree)
        with timer.step("rootfs", "writing the root filesystem (the cached base "
                        "filesystem, patched with what the layers changed)"):
            with timer.part("rootfs.diff"):
                diff = diff_trees(tree, base_tree)
            with timer.part("rootfs.copied"):
                work_fs = root_fs.result()
            needed = work_fs.needed_size(diff)
            if needed > work_fs.size:
                work_fs.grow(needed)
            with timer.part("rootfs.patch"):
                work_fs.patch(diff, tree, work / "rootfs")
        packages.result()
        with timer.step("disk", "writing the disk (the root fs's changed blocks, GPT, "
                        "ESP, GRUB for UEFI and BIOS) and its digest"):
            layout = disk.plan_layout(recipe.manifest.image.volume_size_gib * disk.GIB,
                                      work_fs.size, recipe.inputs_digest)
            with timer.part("disk.compare"):  # while the cached fs goes into the disk
                changed = work_fs.changes(cached_fs.result()[0])
            with timer.part("disk.placed"):
                cached_digests = in_disk.result()
            with timer.part("disk.root"):
                work_fs.write_into(disk_fd, layout.root.start, changed)
                digests = root_digests(cached_digests, changed, work_fs.size)
            with timer.part("disk.boot"):
                write_disk(disk_path, layout, loaders.result(), work / "gpt")
            with timer.part("disk.digest"):
                first = layout.root.start // BLOCK
                disk_digest = fd_digest(disk_fd, {first + i: d for i, d in enumerate(digests)})
        if options.skip_boot_test:
            boot_test: dict[str, Any] = {"skipped": True}
        else:
            # Outside the scratch space: a failed boot's serial log is kept (the
            # error names it); builder.vm removes a passing VM's directory.
            boot_dir = cache.boot_logs / f"{recipe.name}-{recipe.version}-{os.getpid()}"
            with timer.step("boot_test", f"boot-testing roles {', '.join(recipe.roles)}"):
                results = boot_test_disk(disk_path, manifest, recipe.roles, boot_dir)
            shutil.rmtree(boot_dir, ignore_errors=True)
            boot_test = {"skipped": False, "results": results}
        with timer.step("store", "storing the image"):
            image = StoredImage(
                dir=staged,
                id=recipe.image_id,
                name=recipe.name,
                version=recipe.version,
                roles=recipe.roles,
                architecture=manifest.image.architecture,
                boot_mode=manifest.image.boot_mode,
                volume_size_gib=manifest.image.volume_size_gib,
                inputs=recipe.inputs,
                inputs_digest=recipe.inputs_digest,
                disk=DiskInfo(
                    file=DISK_FILE,
                    digest=disk_digest,
                    apparent_size=disk_path.stat().st_size,
                    used_size=disk.used_size(disk_path),
                ),
                packages=packages.result(),
                build_time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                builder_version=__version__,
                boot_test=boot_test,
                app=recipe.app.as_json(),
            )
            stored = store.commit(staged, image, replace=options.force)
        # tens of thousands of unlinks, off the bake's path (on a failure, the
        # workdir goes with the bake, the tree in it)
        cache.remove_later(tree)
    timer.seconds["total"] = round(time.monotonic() - started, 2)
    action: Literal["built", "replaced"] = "replaced" if existing is not None else "built"
    return BakeResult(stored, action, base_cached, timer.seconds, app_cached)


def _app_layer(tree: Path, layer: AppLayer, manifest: Manifest, base_key: str,
               cache: LayerCache, timer: _Timer, scratch: Path) -> bool:
    """The app layer into `tree`, from the cache or built (then cached); cached?"""
    key = layer.key(base_key)
    cached = cache.app_tree(key)
    digest = layer.source.tree_digest.removeprefix("sha256:")[:12]
    if cached is not None:
        with timer.step("app", f"app layer {key[:12]} (tree {digest}) from the cache"):
            write_app_layer(tree, layer, manifest, cached, None)
            with timer.part("app.purge"):
                timer.seconds["app.purge_cached"] = purge(tree, manifest, base_key, cache,
                                                          scratch)
        return True
    with timer.step("app", f"building the app layer {key[:12]} (tree {digest})"), \
            cache.app_staging(key) as keep:
        write_app_layer(tree, layer, manifest, None, keep)
        with timer.part("app.purge"):
            timer.seconds["app.purge_cached"] = purge(tree, manifest, base_key, cache, scratch)
    return False


def _close_all(opened: list[WorkingImage]) -> None:
    for work_fs in opened:
        work_fs.close()


def _cached_image(cache: LayerCache, base_key: str, root_uuid: str, base_tree: Path,
                  timer: _Timer) -> tuple[Path, dict[str, Any]]:
    """The base layer's cached root filesystem and its description (made when missing)."""
    start = time.monotonic()
    image, meta, made = cached_image(cache, RootFsSpec(base_key, root_uuid, rootfs.ROOT_LABEL),
                                     base_tree)
    if made:
        timer.seconds["root_image"] = round(time.monotonic() - start, 2)
    return image, meta


def _open_root_fs(image: Future[tuple[Path, dict[str, Any]]],
                  opened: list[WorkingImage]) -> WorkingImage:
    """The cached root filesystem copied into memory."""
    opened.append(WorkingImage(*image.result()))
    return opened[-1]


def _place_cached(cached_fs: Future[tuple[Path, dict[str, Any]]], disk_fd: int,
                  timer: _Timer) -> list[bytes]:
    """The cached root fs into the disk (root_image.place_cached); its block digests."""
    with timer.part("disk.precopy"):
        place_cached(cached_fs.result()[0], disk_fd, disk.ROOT_START)
    with timer.part("disk.blocks"):
        return cached_block_digests(cached_fs.result()[0])


def _open_disk(stack: contextlib.ExitStack, path: Path, size: int) -> int:
    """The disk file, sparse, of the volume's size; closed when the bake ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    stack.callback(os.close, fd)
    os.ftruncate(fd, size)
    return fd


@dataclass(frozen=True)
class BootLoaders:
    esp: Path  # the ESP's FAT image, GRUB's EFI image in it
    core: Path  # GRUB's BIOS core.img


def build_boot_loaders(work: Path, recipe: BakeRecipe, root_uuid: str) -> BootLoaders:
    """The ESP with GRUB's EFI image, and GRUB's BIOS core, as files in `work`."""
    esp_img = work / "esp.vfat"
    efi = bootloader.build_efi(work / "BOOTX64.EFI", root_uuid)
    volume_id = hashlib.sha256(recipe.inputs_digest.encode()).hexdigest()[:8]
    disk.make_esp(esp_img, disk.ESP_SIZE, efi, volume_id)
    return BootLoaders(esp_img, bootloader.build_bios_core(work / "core.img", root_uuid))


def write_disk(disk_path: Path, layout: disk.DiskLayout, loaders: BootLoaders,
               scratch: Path) -> None:
    """The GPT, the ESP and GRUB's BIOS core into the disk file (of the volume's
    size; the root fs is there already: root_image.WorkingImage.write_into)."""
    disk.write_gpt(disk_path, layout, scratch)
    disk.place(disk_path, loaders.esp, layout.esp)
    bootloader.install_bios(disk_path, loaders.core, layout.bios.start // disk.SECTOR,
                            layout.bios.size // disk.SECTOR)


def base_meta(spec: rootfs.BaseSpec, tree: Path) -> dict[str, Any]:
    """What the layer cache records beside a freshly built base layer."""
    return {
        "key": spec.key(),
        "distro": spec.distro,
        "release": spec.release,
        "architecture": spec.architecture,
        "packages_requested": list(spec.packages),
        "root_uuid": spec.root_uuid(),
        "kernel": rootfs.kernel_version(tree),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder_version": __version__,
    }


