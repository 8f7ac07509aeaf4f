"""Benchmark: `amibake bundle` against pigz and the seed's shell pipeline.

    .venv/bin/python bench/bundle.py            # 2 GiB image (real files + zeros)
    .venv/bin/python bench/bundle.py --quick    # 256 MiB smoke run
    .venv/bin/python bench/bundle.py --only amibake,pigz   # the target's pair only

The image is an ext4 filesystem made with `mkfs.ext4 -d` from a hard-linked
copy of real system directories (/usr/share, /usr/bin, /usr/sbin: text,
compressed man pages, binaries) in a sparse file, so it holds real content
plus free space, like a baked root disk. Each contender runs as a child
process, interleaved run by run; wall time and the child's peak RSS (wait4
ru_maxrss; for a pipeline, the largest of its processes) are measured in the
same run:

- amibake          builder.bundle.writer.bundle_image (sparse tar read straight
                   into 4 MiB chunks, gzip members with libdeflate level 5 via
                   ctypes in one thread per core, AES-128-CBC, 10 MiB parts,
                   SHA-1s on the way)
- amibake-zlib-ng  the same with zlib-ng level 6 in worker processes (the
                   engine before libdeflate)
- pigz             tar -cS | pigz -p 2 | openssl enc -aes-128-cbc | split -b 10m
                   (what a team would script today; pigz's default level 6)
- pipeline-S       tar -cS | gzip | openssl enc -aes-128-cbc | split -b 10m
                   (what the seed's ec2-bundle-image runs)

Throughput is the image's apparent size over wall time (MB/s, 10^6 bytes).
Memory: the largest process's peak (wait4 ru_maxrss) and the peak of the
whole process tree's summed RSS, sampled every 50 ms from /proc.
Target: amibake >= 2.5 x pigz's throughput (ratio of medians), its bundle
no larger than pigz's, peak tree RSS < 256 MiB.
Prints a table and writes bench/results/bundle.json, with the load average
seen before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GiB = 1024**3
MiB = 1024**2

AMIBAKE_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[8])  # this checkout's builder, not the one the venv installed
from builder.bundle.certs import BundleCredentials
from builder.bundle.writer import BundleRequest, bundle_image
image, out, cert, key, ec2, sparse, engine = sys.argv[1:8]
creds = BundleCredentials.load(Path(cert), Path(key), Path(ec2))
r = bundle_image(BundleRequest(image=Path(image), destination=Path(out), prefix="disk.raw",
                               user="123456789012", sparse=sparse == "1", engine=engine), creds)
print(r.manifest.bundled_size)
"""


def tree_rss(root: int) -> int:
    """Sum of VmRSS of `root` and its descendants (bytes), from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields.get("PPid", "0"))
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total = 0
    for pid in rss:
        p = pid
        while p and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += rss[pid]
    return total


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(self.pid))


def timed(argv: list[str], *, cwd: Path | None = None) -> tuple[float, int, float, int, str]:
    """Run a child; (seconds, peak RSS of its largest process in bytes, CPU
    seconds of it and its descendants, sampled peak RSS of its whole process
    tree, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    sampler.stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, sampler.peak, out


def make_image(work: Path, size: int, sources: list[str]) -> Path:
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    for src in sources:
        # hard links: no data copied (same filesystem as /usr), mkfs reads the real files
        subprocess.run(["cp", "-al", src, str(tree / Path(src).name)], check=True)
    image = work / "disk.raw"
    image.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{size // 1024}k"],
                   check=True)
    shutil.rmtree(tree)
    return image


def stage_costs(image: Path, pigz_bytes: int | None) -> dict[str, Any]:
    """Each stage of amibake's bundle alone, on one core, on the bench's image:
    what the 2-core wall time cannot go below. CPU seconds (thread time)."""
    import hashlib
    import re

    from builder.bundle import gzip_parallel as gp
    from builder.bundle.tarstream import tar_stream
    from builder.bundle.writer import CHUNK_SIZE, _Encryptor

    def chunks() -> Iterator[bytearray]:
        buffer = bytearray(CHUNK_SIZE)  # one buffer, reused as the writer's pool does
        return tar_stream(str(image), "disk.raw", read_size=CHUNK_SIZE,
                          new_buffer=lambda: buffer)

    zero = bytes(CHUNK_SIZE)
    t = time.thread_time()
    stream_bytes = sum(len(c) for c in chunks())
    read = time.thread_time() - t
    sha1, t_sha1 = hashlib.sha1(), 0.0
    for c in chunks():
        t = time.thread_time()
        sha1.update(c)
        t_sha1 += time.thread_time() - t
    levels: dict[str, dict[str, float]] = {}
    members: list[bytes] = []
    for level in (4, 5, 6):
        compress = gp.LibdeflateThreads(level)
        out, cpu = 0, 0.0
        for c in chunks():
            if c == zero:  # the writer reuses one member for these
                continue
            t = time.thread_time()
            member = compress(c)
            cpu += time.thread_time() - t
            out += len(member)
            if level == gp.DEFAULT_LEVEL["libdeflate"]:
                members.append(member)
        compress.close()
        levels[str(level)] = {"cpu_seconds": round(cpu, 2), "bytes": out,
                              "vs_pigz": round(out / pigz_bytes, 4) if pigz_bytes else None}
    compressed = sum(len(m) for m in members)
    encrypt = _Encryptor(os.urandom(16), os.urandom(16))
    t = time.thread_time()
    for m in members:
        encrypt.update(m)
    encrypt.finalize()
    t_encrypt = time.thread_time() - t
    t = time.thread_time()
    parts_sha1 = hashlib.sha1()
    for m in members:
        parts_sha1.update(m)
    t_parts_sha1 = time.thread_time() - t
    speed = subprocess.run(["openssl", "speed", "-evp", "aes-128-cbc", "-seconds", "1"],
                           capture_output=True, text=True).stdout
    row = re.search(r"^AES-128-CBC\s.*\s([\d.]+)k\s*$", speed, re.M)
    level = str(gp.DEFAULT_LEVEL["libdeflate"])
    serial = read + t_sha1 + t_encrypt + t_parts_sha1
    return {
        "tar_stream_bytes": stream_bytes,
        "read_cpu_seconds": round(read, 2),
        "tar_sha1_cpu_seconds": round(t_sha1, 2),
        "libdeflate_levels": levels,
        "encrypt_cpu_seconds": round(t_encrypt, 2),
        "encrypt_mb_per_s": round(compressed / 1e6 / t_encrypt),
        "openssl_speed_aes128cbc_16k_mb_per_s": round(float(row.group(1)) / 1000) if row else None,
        "parts_sha1_cpu_seconds": round(t_parts_sha1, 2),
        # two cores: compression splits over both; the rest (read, digests, CBC) is
        # one ordered stream that runs beside it
        "floor_wall_seconds": round(max(serial, (levels[level]["cpu_seconds"] + serial) / 2), 2),
    }


def libdeflate_name() -> str | None:
    """Which libdeflate amibake's ctypes engine loads (the deflate package's or Debian's)."""
    from builder.bundle import gzip_parallel

    lib = gzip_parallel._LIBDEFLATE
    if lib is None:
        return None
    path = Path(lib._name)  # the package's extension (named from site-packages on) or a soname
    return "/".join(path.parts[-2:]) if path.is_absolute() else str(path)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB image of /usr/share/doc")
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/amibake-bench-bundle"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs of each contender (interleaved); figures are the median run's")
    ap.add_argument("--floor", action="store_true",
                    help="also time each stage alone on one core (read, SHA-1, libdeflate"
                         " levels 4-6 with sizes against pigz's, AES-CBC) and the 2-core floor")
    ap.add_argument("--only", default="",
                    help="comma-separated contenders to run (default: all); amibake and pigz"
                         " are always run, the figures need both")
    args = ap.parse_args()

    from bundle_pki import make_pki

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        pki = make_pki(work / "pki")
        if args.quick:
            size, sources = 256 * MiB, ["/usr/share/doc"]
        else:
            size, sources = int(args.size_gib * GiB), ["/usr/share", "/usr/bin", "/usr/sbin"]
        t0 = time.perf_counter()
        image = make_image(work, size, sources)
        st = image.stat()
        print(f"image: {st.st_size / GiB:.2f} GiB apparent, {st.st_blocks * 512 / MiB:.0f} MiB"
              f" used, from {', '.join(sources)} ({time.perf_counter() - t0:.1f} s)")
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        key_hex, iv_hex = os.urandom(16).hex(), os.urandom(16).hex()
        load_before = os.getloadavg()
        enc = (f"openssl enc -aes-128-cbc -K {key_hex} -iv {iv_hex}"
               " | split -b 10m - out/disk.raw.part.")
        contenders: dict[str, str | tuple[str, str]] = {
            "pigz": f"tar -cS disk.raw | pigz -p 2 | {enc}",
            "amibake": ("1", "auto"),
            "pipeline-S": f"tar -cS disk.raw | gzip | {enc}",
            "amibake-zlib-ng": ("1", "zlib-ng"),
        }
        if args.only:
            keep = {"amibake", "pigz", *args.only.split(",")}
            unknown = keep - contenders.keys()
            if unknown:
                raise SystemExit(f"--only: unknown contender(s) {', '.join(sorted(unknown))}")
            contenders = {k: v for k, v in contenders.items() if k in keep}
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for run in range(1, args.runs + 1):
            for name, spec in contenders.items():
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if isinstance(spec, str):
                    argv = ["bash", "-o", "pipefail", "-c", spec]
                else:
                    argv = [sys.executable, "-c", AMIBAKE_CHILD, str(image), str(out),
                            str(pki.cert), str(pki.key), str(pki.ec2_cert), *spec, str(ROOT)]
                seconds, rss, cpu, tree, _ = timed(argv, cwd=work)
                bundled = dir_bytes(out)
                sample = {
                    "seconds": round(seconds, 2),
                    "mb_per_s": round(st.st_size / 1e6 / seconds, 1),
                    "bundled_bytes": bundled,
                    "parts": len(list(out.iterdir())),
                    "peak_rss_mib": round(rss / MiB, 1),
                    "peak_tree_rss_mib": round(tree / MiB, 1),
                    "cpu_seconds": round(cpu, 2),
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                }
                samples[name].append(sample)
                print(f"run {run} {name:14} {seconds:7.1f} s {sample['mb_per_s']:8.1f} MB/s "
                      f"cpu {cpu:6.1f} s  RSS {rss / MiB:5.1f} MiB (tree {tree / MiB:5.1f})"
                      f"  bundle {bundled / MiB:7.1f} MiB"
                      f"  load {os.getloadavg()[0]:.2f}")
                shutil.rmtree(out)
        results: dict[str, dict[str, Any]] = {}
        for name, runs in samples.items():
            ordered = sorted(runs, key=lambda r: r["seconds"])
            median = dict(ordered[len(ordered) // 2])
            median["runs_seconds"] = [r["seconds"] for r in runs]
            median["max_peak_tree_rss_mib"] = max(r["peak_tree_rss_mib"] for r in runs)
            results[name] = median
            print(f"median {name:14} {median['seconds']:7.1f} s {median['mb_per_s']:8.1f} MB/s")
        speedup = results["amibake"]["mb_per_s"] / results["pigz"]["mb_per_s"]
        seed = results.get("pipeline-S")
        speedup_seed = results["amibake"]["mb_per_s"] / seed["mb_per_s"] if seed else None
        size_ratio = results["amibake"]["bundled_bytes"] / results["pigz"]["bundled_bytes"]
        # CPU seconds are what a busy machine does not distort much: on an idle 2-core
        # machine the wall ratio approaches this (both sides then get both cores)
        cpu_ratio = (sorted(r["cpu_seconds"] for r in samples["pigz"])[args.runs // 2]
                     / sorted(r["cpu_seconds"] for r in samples["amibake"])[args.runs // 2])
        rss = results["amibake"]["max_peak_tree_rss_mib"]
        floor = stage_costs(image, results["pigz"]["bundled_bytes"]) if args.floor else None
        doc = {
            "benchmark": "bundle",
            "command": "python bench/bundle.py" + (" --quick" if args.quick else "")
                       + f" --runs {args.runs}" + (f" --only {args.only}" if args.only else "")
                       + (" --floor" if args.floor else ""),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                     "loadavg_before": [round(x, 2) for x in load_before],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "image": {"apparent_bytes": st.st_size, "used_bytes": st.st_blocks * 512,
                      "sources": sources},
            "amibake_libdeflate": libdeflate_name(),
            "stage_costs": floor,
            "results": results,
            "speedup_vs_pigz": round(speedup, 2),
            "speedup_vs_seed_pipeline": round(speedup_seed, 2) if speedup_seed else None,
            "bundle_size_vs_pigz": round(size_ratio, 4),
            "cpu_seconds_pigz_over_amibake": round(cpu_ratio, 2),
            "target": {"speedup_vs_pigz": 2.5, "bundle_size_vs_pigz": 1.0, "peak_rss_mib": 256},
            "met": speedup >= 2.5 and size_ratio <= 1.0 and rss < 256,
        }
        print(f"amibake vs pigz: {speedup:.2f}x, bundle {size_ratio:.4f} of pigz's, peak tree RSS "
              f"{rss:.0f} MiB, CPU seconds pigz/amibake {cpu_ratio:.2f}"
              f" (vs the seed's gzip pipeline "
              f"{f'{speedup_seed:.2f}x' if speedup_seed else 'not run'}); target 2.5x, "
              f"<= 1.0, < 256 MiB: {'met' if doc['met'] else 'NOT met'}")
        if floor:
            levels = ", ".join(f"L{k} {v['cpu_seconds']} s {v['vs_pigz']}x pigz's size"
                               for k, v in floor["libdeflate_levels"].items())
            print(f"stages alone, CPU s: read {floor['read_cpu_seconds']}, tar SHA-1 "
                  f"{floor['tar_sha1_cpu_seconds']}, libdeflate {levels}, AES-CBC "
                  f"{floor['encrypt_cpu_seconds']} ({floor['encrypt_mb_per_s']} MB/s; openssl "
                  f"speed {floor['openssl_speed_aes128cbc_16k_mb_per_s']} MB/s), parts SHA-1 "
                  f"{floor['parts_sha1_cpu_seconds']}; 2-core floor "
                  f"{floor['floor_wall_seconds']} s")
        name = "bundle-quick.json" if args.quick else "bundle.json"
        results_dir = ROOT / "bench" / "results"
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / name).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote bench/results/{name}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
