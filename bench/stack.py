"""Benchmark: the stack, two parts, one JSON (bench/results/stack.json).

    .venv/bin/python bench/stack.py --part templates            # cheap, no lock needed
    flock /tmp/amibake-heavy.lock .venv/bin/python bench/stack.py --part vm --vm-runs 1

templates: `amibake stack template` (load + template + YAML) per manifest with a `stack:`
section, repeated, and cfn-lint (the real linter, in-process, informational rules
included) on each template, after one warm-up pass (cfn-lint loads its resource specs
once; timed apart).

vm: power-on to the first HTTP 200 for `GET /` (the sample app reads the employees from
PostgreSQL, so the answer went through every tier) of the local split stack — web, app
and db as three VMs on one private qemu network, booted by the code of
`amibake launch --target local --stack` (builder/vm/stack_launch.py) — against the
all-in-one role booted by the code of `amibake launch --target local` (the same
supervisor, qemu and IMDS emulator), interleaved in the same run (split, all-in-one,
split, ...); medians and their ratio. The clock starts just before the first qemu is
started and stops at the first 200 through web's forwarded HTTP port. The image is the
manifest baked once into a bench-private store (no boot test; an unchanged bake is a
no-op). Runs one part and keeps the other part's last figures in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.errors import UserError  # noqa: E402
from builder.manifest import load_manifest  # noqa: E402
from builder.manifest.model import Manifest  # noqa: E402
from builder.stack.template import template_yaml  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stack.json"


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def templates_part(repeat: int, lint_repeat: int) -> dict[str, Any]:
    from cfnlint.api import ManualArgs, lint

    paths = [p for p in sorted((ROOT / "manifests").glob("*.yaml"))
             if load_manifest(p).stack is not None]
    if not paths:
        raise SystemExit("no manifest in manifests/ has a stack: section")
    config = ManualArgs(regions=["us-east-1"], include_checks=["I"])
    start = time.perf_counter()
    lint("AWSTemplateFormatVersion: '2010-09-09'\nResources: {}\n", config=config)
    lint_load = time.perf_counter() - start

    per_manifest = []
    problems = 0
    for path in paths:
        text = template_yaml(load_manifest(path))
        def generate_one(p: Path = path) -> str:
            return template_yaml(load_manifest(p))

        generate = _timed(generate_one, repeat)
        findings: list[str] = []

        def run_lint(t: str = text, out: list[str] = findings) -> None:
            out[:] = [f"{m.rule.id} {m.message}" for m in lint(t, config=config)]

        linting = _timed(run_lint, lint_repeat)
        problems += len(findings)
        per_manifest.append({
            "manifest": path.name, "template_bytes": len(text.encode()),
            "resources": text.count("\n    Type: "),
            "generate_median_s": round(statistics.median(generate), 4),
            "cfn_lint_median_s": round(statistics.median(linting), 4),
            "cfn_lint_findings": findings,
        })
        print(f"{path.name}: {per_manifest[-1]['resources']} resources, "
              f"{len(text.encode())} bytes; template median "
              f"{statistics.median(generate) * 1000:.1f} ms over {repeat}, cfn-lint median "
              f"{statistics.median(linting):.2f} s over {lint_repeat}, "
              f"{len(findings)} finding(s)")
    print(f"cfn-lint's first load {lint_load:.2f} s")
    return {
        "what": "amibake stack template (load + template + YAML) and cfn-lint (informational "
                "rules included) per manifest with a stack: section",
        "manifests": per_manifest, "cfn_lint_first_load_s": round(lint_load, 4),
        "repeat": repeat, "lint_repeat": lint_repeat, "problems": problems,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ------------------------------------------------------------------ VMs


def app_kind(m: Manifest) -> str:
    """Which app the run served: the Rack sample, or the team's own (e.g. the Rails sample)."""
    code = m.app.code
    if isinstance(code, str):
        return code
    return f"{code.kind}: {code.path or code.git or code.tarball}"


def baked_image(m: Manifest, store: Path) -> tuple[Any, float, str]:
    """The manifest's image in the bench's own store: baked (no boot test) or reused."""
    from builder.bake.cache import default_cache_dir
    from builder.bake.pipeline import BakeOptions, bake

    start = time.monotonic()
    options = BakeOptions(store_root=store, cache_dir=default_cache_dir(),
                          skip_boot_test=True)
    try:
        result = bake(m, options, say=lambda text: print(f"  bake: {text}", flush=True))
    except UserError as exc:  # the same version baked from other inputs: replace it
        print(f"  bake: {exc}; baking again with force", flush=True)
        options = BakeOptions(store_root=store, cache_dir=default_cache_dir(),
                              skip_boot_test=True, force=True)
        result = bake(m, options, say=lambda text: print(f"  bake: {text}", flush=True))
    return result.image, time.monotonic() - start, result.action


def first_200(port: int, host: str, path: str, timeout: float, t0: float,
              alive: Callable[[], None]) -> float:
    """Seconds since `t0` at the first 200 for GET `path` on 127.0.0.1:`port`."""
    from builder.vm.checks import http_get
    from builder.wait import NotYet, Waiter, wait_for

    def answered() -> float:
        alive()
        ans = http_get(port, path, host_header=host, timeout=10)
        if ans.status != 200:
            raise NotYet(f"GET {path} answered {ans.status}")
        return time.monotonic() - t0

    return wait_for(answered, Waiter(f"GET {path} → 200", attempts=100_000, interval=1.0,
                                     timeout=timeout), retry_on=(OSError,))


def _running(root: Path, ids: list[str]) -> Callable[[], None]:
    from builder.vm.launch import list_instances

    def check() -> None:
        up = {i.instance_id for i in list_instances(root) if i.running}
        gone = [i for i in ids if i not in up]
        if gone:
            raise UserError(f"VM {', '.join(gone)} exited before the first 200",
                            hint=f"see its serial.log under {root}")
    return check


def _keep_logs(root: Path, work: Path) -> None:
    """A failed boot's state (serial logs, supervisor logs; no disks) kept under `work`."""
    keep = work / f"failed-{root.name}"
    shutil.copytree(root, keep, ignore=shutil.ignore_patterns("*.qcow2", "*.raw"),
                    dirs_exist_ok=True)
    print(f"  serial logs kept in {keep}", flush=True)


def boot_split(image: Any, m: Manifest, path: str, timeout: float, work: Path) -> dict[str, Any]:
    from builder.stack.template import stack_name
    from builder.vm.launch import read_instance
    from builder.vm.stack_launch import launch_stack, stack_dir, stop_stack

    root = Path(tempfile.mkdtemp(prefix="split-", dir=work))
    t0 = time.monotonic()
    state = launch_stack(image, m, root=root)
    try:
        launched = time.monotonic() - t0
        ids = [member["instance_id"] for member in state.members.values()]
        web = read_instance(root / state.members["web"]["instance_id"])
        assert web is not None
        seconds = first_200(web.http_port, m.app.server_name, path, timeout, t0,
                            _running(root, ids))
    except BaseException:
        _keep_logs(root, work)
        raise
    finally:
        if stack_dir(stack_name(m), root).exists():
            stop_stack(stack_name(m), root)
        shutil.rmtree(root, ignore_errors=True)
    return {"seconds": round(seconds, 1), "all_qemu_started_s": round(launched, 1),
            "vms": len(ids), "roles": list(state.members)}


def boot_all_in_one(image: Any, m: Manifest, path: str, timeout: float,
                    work: Path) -> dict[str, Any]:
    from builder.vm.launch import launch_local, stop_instance

    root = Path(tempfile.mkdtemp(prefix="aio-", dir=work))
    t0 = time.monotonic()
    inst = launch_local(image, m, "all-in-one", root=root)
    try:
        seconds = first_200(inst.http_port, m.app.server_name, path, timeout, t0,
                            _running(root, [inst.instance_id]))
    except BaseException:
        _keep_logs(root, work)
        raise
    finally:
        try:
            stop_instance(inst.instance_id, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"seconds": round(seconds, 1), "vms": 1}


def vm_part(manifest_path: Path, store: Path, runs: int, timeout: float,
            path: str, work: Path, note: str) -> dict[str, Any]:
    from builder.vm.accel import detect_accel

    m = load_manifest(manifest_path)
    print(f"image: baking {manifest_path.name} into {store} (no-op when unchanged) ...",
          flush=True)
    image, bake_s, action = baked_image(m, store)
    work.mkdir(parents=True, exist_ok=True)
    accel = detect_accel()
    load_before = os.getloadavg()
    runs_by_kind: dict[str, list[dict[str, Any]]] = {"split": [], "all_in_one": []}
    errors: list[str] = []
    boots = {"split": boot_split, "all_in_one": boot_all_in_one}
    for i in range(runs):
        for kind in ("split", "all_in_one"):
            print(f"round {i + 1}: {kind} ...", flush=True)
            try:
                run = boots[kind](image, m, path, timeout, work)
            except UserError as exc:
                errors.append(f"round {i + 1} {kind}: {exc}")
                print(f"  FAILED: {exc}", flush=True)
                continue
            run["round"] = i + 1
            runs_by_kind[kind].append(run)
            print(f"  first 200 after {run['seconds']} s", flush=True)

    def median(kind: str) -> float | None:
        values = [r["seconds"] for r in runs_by_kind[kind]]
        return round(statistics.median(values), 1) if values else None

    split_m, aio_m = median("split"), median("all_in_one")
    return {
        "what": "power-on (first qemu start) to the first HTTP 200 for GET " + path
                + " through web's forwarded port: the local split stack (web → app → db, "
                "three VMs, `launch --target local --stack`'s code) against the all-in-one "
                "role (`launch --target local`'s code), interleaved in one run",
        "manifest": manifest_path.name, "app": app_kind(m),
        "image": {"name": image.name, "version": str(image.version), "id": image.id,
                  "bake": action, "bake_s": round(bake_s, 1)},
        "accel": accel.name, "vm": {"memory_mib": 1024, "cpus": 2},
        "runs_per_kind": runs, "note": note,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs_by_kind, "errors": errors,
        "median_seconds": {"split": split_m, "all_in_one": aio_m},
        "ratio_split_to_all_in_one": round(split_m / aio_m, 3) if split_m and aio_m else None,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("templates", "vm", "all"), default="templates",
                        help="vm boots qemu: run it under flock /tmp/amibake-heavy.lock")
    parser.add_argument("--repeat", type=int, default=20, help="template generations")
    parser.add_argument("--lint-repeat", type=int, default=3, help="cfn-lint runs")
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests/smallpayroll.yaml")
    parser.add_argument("--store", type=Path, default=ROOT / ".cache/bench-stack/images")
    parser.add_argument("--vm-runs", type=int, default=3, help="boots of each kind")
    parser.add_argument("--timeout", type=float, default=1500, help="per boot, seconds")
    parser.add_argument("--path", default="/")
    parser.add_argument("--note", default="", help="said in the JSON (e.g. why runs=1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    doc: dict[str, Any] = {}
    if args.out.is_file():
        doc = json.loads(args.out.read_text())
    doc = {"benchmark": "stack", "templates": doc.get("templates"), "vm": doc.get("vm")}
    if args.part in ("templates", "all"):
        doc["templates"] = templates_part(args.repeat, args.lint_repeat)
    if args.part in ("vm", "all"):
        doc["vm"] = vm_part(args.manifest, args.store, args.vm_runs, args.timeout, args.path,
                            ROOT / ".cache" / "bench-stack" / "runs", args.note)
    doc["cpus"] = os.cpu_count()
    doc["python"] = platform.python_version()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    vm = doc.get("vm")
    if args.part != "templates" and vm:
        med = vm["median_seconds"]
        print(f"\nsplit stack median {med['split']} s, all-in-one median {med['all_in_one']} s,"
              f" split/all-in-one = {vm['ratio_split_to_all_in_one']} "
              f"({vm['runs_per_kind']} run(s) each, app {vm['app']}, accel {vm['accel']})")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    failed = (doc["templates"] or {}).get("problems", 0) if args.part != "vm" else 0
    return 1 if failed or (args.part != "templates" and vm and vm["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
