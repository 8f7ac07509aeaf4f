"""Benchmark: power-on to HTTP 200, baked image vs "fried" (user-data only).

    flock /tmp/amibake-heavy.lock .venv/bin/python bench/boot.py   # all-in-one, 3 baked + 1 fried
    flock /tmp/amibake-heavy.lock .venv/bin/python bench/boot.py --runs-baked 1 --runs-fried 0

Both contenders boot under the same qemu setup (builder.vm: TCG or KVM as
the host allows, 1 GiB, 2 vCPUs, OVMF, the IMDS emulator behind
169.254.169.254, SMBIOS "Amazon EC2"), in the same run, one VM at a time:

- baked: the newest image of the manifest in the local store (`make image`),
  user-data = render_role(..., baked=True) (the role marker only);
- fried: a base image holding only the OS and cloud-init (the same base
  packages the baker uses, no role packages, no amibake files), user-data =
  render_role(..., baked=False): cloud-init installs the role's packages
  from the host's apt mirror at boot (the guest reaches it through qemu user
  networking's NAT and DNS), writes every file and runs the dispatcher.
  For the team's own app (manifests/smallpayroll.yaml: the Rails sample) the
  user-data also carries the app's tree as a tar.gz, unpacked at app.root and
  built at boot by the bake's own app-build (Bundler --local against Debian's
  gems, assets:precompile); what a team without an image builder does. That
  user-data is ~25 KB gzipped, over EC2's 16 KiB cap: on EC2 the tree would
  come from S3 or git instead; the local metadata emulator serves it as is.

The clock starts when qemu starts and stops at the first 200 for `GET /`
through the forwarded HTTP port (nginx; for all-in-one: nginx → puma →
PostgreSQL; for the team's own app a page the app rendered, its CSRF meta tag).
Where each boot's time went (serial console, guest and journal timelines,
cloud-init's own per-module times) comes from bench/boot_timeline.py.
Prints medians and writes bench/results/boot.json. Target: baked ≤ 0.35 × fried.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.boot_timeline import (  # noqa: E402
    SerialClock,
    after_first_200,
    first_200,
    journal_summary,
)
from builder.errors import UserError  # noqa: E402
from builder.manifest import load_manifest  # noqa: E402
from builder.manifest.model import Manifest  # noqa: E402
from builder.render.app import own_app  # noqa: E402
from builder.vm.accel import detect_accel  # noqa: E402
from builder.vm.imds import imds_server  # noqa: E402
from builder.vm.metadata import (  # noqa: E402
    LOCAL_SECRETS_ENDPOINT,
    LocalInstanceIdentity,
    local_user_data,
    new_instance_id,
    secret_values,
)
from builder.vm.qemu import Vm, VmSpec  # noqa: E402
from builder.vm.ssh import Ssh, generate_key  # noqa: E402
from builder.wait import WaitTimeout  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "boot.json"
TARGET = 0.35
#: The first 200 of the team's own (Rails) app: a page Rails rendered.
RAILS_MARKER = b'name="csrf-token"'


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def fried_user_data(manifest: Manifest, role: str, work: Path) -> bytes:
    """The fried contender's user-data: packages, every file and the dispatcher; for
    the team's own app also the app's tree (a tar.gz, unpacked and built at boot)."""
    from builder.app import source
    from builder.render import render_role

    archive = None
    if own_app(manifest):
        resolved = source.resolve(manifest, work / "app-tree", allow_dirty=True)
        assert resolved.tree is not None
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(resolved.tree, arcname=".", filter=_owned_by_root)
        archive = buf.getvalue()
        shutil.rmtree(work / "app-tree", ignore_errors=True)
    return render_role(manifest, role, baked=False, app_archive=archive,
                       markers={"secrets-endpoint": LOCAL_SECRETS_ENDPOINT}).user_data


def boot_to_200(disk: Path, manifest: Manifest, role: str, *, baked: bool, workdir: Path,
                timeout: float, path: str = "/") -> dict[str, object]:
    """One boot: seconds from qemu start to the first 200 for GET `path` (for the
    team's own app: a page the app rendered), and where the time went."""
    key = generate_key(workdir / "id_ed25519")
    user_data = (local_user_data(manifest, role, baked=True) if baked
                 else fried_user_data(manifest, role, workdir))
    ident = LocalInstanceIdentity(
        instance_id=new_instance_id(), role=role,
        instance_type=manifest.roles[role].instance_type, public_key=key.openssh_public(),
        user_data=user_data, secrets=secret_values(manifest),
    )
    vmdir = workdir / ident.instance_id
    marker = RAILS_MARKER if own_app(manifest) else b""
    with imds_server(ident) as imds, Vm(
        VmSpec(disk=disk, imds_port=imds.port, instance_id=ident.instance_id,
               instance_type=ident.instance_type, timeout=timeout + 600), vmdir,
    ) as vm:
        try:
            seconds, serial = first_200(vm, manifest.app.server_name, path, marker, timeout)
        except WaitTimeout as exc:
            raise vm.failure(f"{'baked' if baked else 'fried'} boot of {role}: {exc}") from exc
        requests = len(imds.requests)
        journal, guest = after_first_200(
            vm, Ssh(key, vm.ports.ssh, manifest.image.login_user), serial)
    shutil.rmtree(vmdir, ignore_errors=True)
    return {"seconds": round(seconds, 1), "instance_id": ident.instance_id,
            "imds_requests": requests, "user_data_bytes": len(ident.user_data),
            "milestones": serial.milestones(), "journal": journal, "serial": serial.lines,
            "guest": guest}


def boot_to_multi_user(disk: Path, manifest: Manifest, role: str, *, workdir: Path,
                       timeout: float) -> dict[str, object]:
    """The floor: the OS-only disk (firmware, kernel, initramfs, systemd, cloud-init;
    no role, no packages; cloud-config naming only the host key types), power-on to
    multi-user.target and to cloud-init's "finished", from the serial console."""
    key = generate_key(workdir / "id_ed25519")
    ident = LocalInstanceIdentity(
        instance_id=new_instance_id(), role=role,
        instance_type=manifest.roles[role].instance_type, public_key=key.openssh_public(),
        # the role's host key types, as both contenders have them
        user_data=("#cloud-config\nssh_genkeytypes: "
                   f"[{', '.join(manifest.image.ssh_host_key_types)}]\n").encode(),
        secrets=secret_values(manifest),
    )
    vmdir = workdir / ident.instance_id
    with imds_server(ident) as imds, Vm(
        VmSpec(disk=disk, imds_port=imds.port, instance_id=ident.instance_id,
               instance_type=ident.instance_type, timeout=timeout + 60), vmdir,
    ) as vm:
        serial = SerialClock(vm)
        deadline = time.monotonic() + timeout
        while "cloud-init finished" not in serial.milestones():
            vm.check_running()
            if time.monotonic() > deadline:
                raise vm.failure(f"the OS-only disk did not finish cloud-init in {timeout} s")
            time.sleep(0.5)
            serial.poll()
    shutil.rmtree(vmdir, ignore_errors=True)
    return {"milestones": serial.milestones(), "serial": serial.lines}


def fried_base_disk(manifest: Manifest, cache: Path) -> Path:
    """A disk with only the OS and cloud-init, built once and cached by its inputs.

    Built from the baker's own pieces: the base layer with the base packages
    only (no role packages), the baker's own files (the login user and the
    image's cloud-init settings), GRUB for UEFI and BIOS. No amibake file, no
    role: the fried user-data brings all of that at boot.
    """
    import dataclasses

    from builder.bake import bootloader, rootfs
    from builder.bake.cache import LayerCache, default_cache_dir
    from builder.bake.pipeline import base_meta, build_disk, image_own_files, recipe_for
    from builder.bake.sources import host_sources

    img = manifest.image
    spec = rootfs.base_spec(img.distro, img.release, img.architecture, (), (),
                            host_sources(img.release))
    own = image_own_files(manifest)
    key = hashlib.sha256(f"{spec.key()}\0{rootfs.config_key(own, ())}".encode()).hexdigest()
    disk = cache / f"fried-base-{key[:16]}" / "disk.raw"
    if disk.is_file():
        return disk
    plan = dataclasses.replace(recipe_for(manifest), base=spec,
                               inputs_digest="sha256:" + spec.key())
    layers = LayerCache(default_cache_dir())
    partial = disk.with_suffix(".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with layers.workdir() as work:
            tree = work / "tree"
            entry = layers.lookup(spec.key())
            if entry is not None:
                layers.extract(entry, tree)
            else:
                print(f"building the OS-only base layer ({len(spec.packages)} packages) ...",
                      flush=True)
                rootfs.build_base(spec, tree, work / "hooks")
                layers.store(spec.key(), tree, base_meta(spec, tree))
            rootfs.write_config_layer(tree, own, ())
            root_uuid = spec.root_uuid()
            kernel = rootfs.kernel_version(tree)
            (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
            (tree / "boot/grub/grub.cfg").write_text(bootloader.grub_cfg(kernel, root_uuid))
            build_disk(partial, tree, work, plan, root_uuid)
        partial.rename(disk)
    finally:
        partial.unlink(missing_ok=True)
    return disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests/smallpayroll.yaml")
    parser.add_argument("--role", default="all-in-one")
    parser.add_argument("--store", type=Path, help="image store (default: $AMIBAKE_STORE "
                        "or ./images)")
    parser.add_argument("--runs-baked", type=int, default=3)
    parser.add_argument("--runs-fried", type=int, default=1)
    parser.add_argument("--runs-floor", type=int, default=1,
                        help="boots of the OS-only disk with no role (power-on to "
                        "multi-user.target: the floor)")
    parser.add_argument("--timeout-baked", type=float, default=600)
    parser.add_argument("--timeout-fried", type=float, default=3600)
    parser.add_argument("--fried-disk", type=Path,
                        help="an OS-only disk to use instead of building one")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-boot")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from builder.store import Store, default_store_root

    manifest = load_manifest(args.manifest)
    image = Store(args.store or default_store_root()).get(manifest.name)
    fried_disk = (args.fried_disk or fried_base_disk(manifest, args.cache)
                  if args.runs_fried or args.runs_floor else None)
    accel = detect_accel()
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, object]]] = {"baked": [], "fried": []}
    errors: dict[str, str] = {}
    # a failed boot's serial log stays under here (its path is in the error)
    runs_dir = args.cache / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    # interleaved (baked, fried, baked, ...): a shared host's load drifts
    plan = []
    for i in range(max(args.runs_baked, args.runs_fried)):
        if i < args.runs_baked:
            plan.append(("baked", image.disk_path, args.timeout_baked))
        if i < args.runs_fried:
            plan.append(("fried", fried_disk, args.timeout_fried))
    for kind, disk, timeout in plan:
        print(f"{kind}: booting {args.role} from {disk} ...", flush=True)
        try:
            run = boot_to_200(Path(disk), manifest, args.role, baked=kind == "baked",
                              workdir=runs_dir, timeout=timeout)
        except UserError as exc:
            errors[kind] = str(exc)
            print(f"{kind}: FAILED: {exc}", flush=True)
            continue
        print(f"{kind}: HTTP 200 after {run['seconds']} s", flush=True)
        runs[kind].append(run)

    floor: list[dict[str, object]] = []
    for _ in range(args.runs_floor):
        assert fried_disk is not None
        print(f"floor: booting the OS-only disk {fried_disk} with no role ...", flush=True)
        try:
            floor.append(boot_to_multi_user(Path(fried_disk), manifest, args.role,
                                            workdir=runs_dir, timeout=args.timeout_baked))
        except UserError as exc:
            errors["floor"] = str(exc)
            print(f"floor: FAILED: {exc}", flush=True)
            continue
        print(f"floor: {floor[-1]['milestones']}", flush=True)

    def median(kind: str) -> float | None:
        values = [float(r["seconds"]) for r in runs[kind]]  # type: ignore[arg-type]
        return round(statistics.median(values), 1) if values else None

    baked_m, fried_m = median("baked"), median("fried")
    ratio = round(baked_m / fried_m, 3) if baked_m and fried_m else None
    doc = {
        "benchmark": "boot-to-200", "role": args.role, "path": "/",
        "manifest": str(args.manifest.relative_to(ROOT) if args.manifest.is_relative_to(ROOT)
                        else args.manifest),
        "image": {"name": image.name, "version": str(image.version), "id": image.id},
        "command": "flock /tmp/amibake-heavy.lock .venv/bin/python bench/boot.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "fried_disk": str(fried_disk), "accel": accel.name, "accel_reason": accel.reason,
        "vm": {"memory_mib": 1024, "cpus": 2}, "host_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs, "errors": errors,
        "floor_runs": floor,
        "floor_median_seconds": {
            name: round(statistics.median(
                float(r["milestones"][name]) for r in floor  # type: ignore[index]
                if name in r["milestones"]), 1)  # type: ignore[operator]
            for name in ("kernel started", "systemd in the root fs",
                         "cloud-init local stage done", "cloud-init network stage done",
                         "multi-user.target", "cloud-init finished")
            if any(name in r["milestones"] for r in floor)},  # type: ignore[operator]
        "median_seconds": {"baked": baked_m, "fried": fried_m},
        "ratio_baked_to_fried": ratio, "target_ratio": TARGET,
        "meets_target": ratio is not None and ratio <= TARGET,
        "baked_journal_median_seconds": journal_summary(runs["baked"]),  # type: ignore[arg-type]
        "fried_journal_median_seconds": journal_summary(runs["fried"]),  # type: ignore[arg-type]
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'':8}{'runs':>6}{'median s':>10}")
    for kind, m in (("baked", baked_m), ("fried", fried_m)):
        print(f"{kind:8}{len(runs[kind]):>6}{m if m is not None else '-':>10}")
    for kind in ("baked", "fried"):
        if runs[kind]:
            print(f"{kind} boot, median seconds since power-on (journal):")
            for mark, sec in doc[f"{kind}_journal_median_seconds"].items():  # type: ignore[attr-defined]
                print(f"  {sec:7.1f}  {mark}")
    if floor:
        print(f"floor (OS-only disk, no role), median seconds since power-on: "
              f"{doc['floor_median_seconds']}")
    print(f"baked/fried = {ratio if ratio is not None else '-'} (target <= {TARGET}); "
          f"accel {accel.name}; wrote {args.out}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
