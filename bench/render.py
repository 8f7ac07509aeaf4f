"""Benchmark: render + validate every role of every manifest, repeated.

What `amibake validate` does for the whole set (fried and baked user-data per
role, cloud-init 22.4.2's schema in-process, amibake's lints), timed N times
after one warm-up pass (which also loads cloud-init's schema, timed apart).
Prints the median and writes bench/results/render.json. Target: <= 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.manifest import load_manifest  # noqa: E402
from builder.render import render_role  # noqa: E402
from builder.validate import validate_rendered  # noqa: E402
from builder.validate.schema import cloudinit_version, forget_verdicts  # noqa: E402

TARGET_S = 0.5


def one_pass(paths: list[Path]) -> tuple[int, int]:
    """Load, render and validate everything once; (user-data rendered, problems)."""
    rendered = problems = 0
    forget_verdicts()  # each pass checks every document afresh
    for path in paths:
        manifest = load_manifest(path)
        for role in manifest.roles:
            for baked in (False, True):
                rendered_role = render_role(manifest, role, baked=baked)
                problems += len(validate_rendered(manifest, rendered_role))
                rendered += 1
    return rendered, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    paths = sorted((ROOT / "manifests").glob("*.yaml"))
    start = time.perf_counter()
    version = cloudinit_version()
    schema_load = time.perf_counter() - start
    start = time.perf_counter()
    rendered, problems = one_pass(paths)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        one_pass(paths)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "benchmark": "render",
        "what": "load + render + validate (cloud-init schema + lints), every role of every "
        "manifest, fried and baked user-data",
        "manifests": [p.name for p in paths],
        "user_data_per_pass": rendered,
        "problems": problems,
        "cloud_init": version,
        "repeat": args.repeat,
        "schema_load_s": round(schema_load, 4),
        "first_pass_s": round(first, 4),
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "target_s": TARGET_S,
        "meets_target": median <= TARGET_S,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = ROOT / "bench" / "results" / "render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"render+validate {len(paths)} manifests, {rendered} user-data per pass: "
          f"median {median:.3f} s over {args.repeat} (min {min(times):.3f}, max {max(times):.3f}); "
          f"first pass {first:.3f} s, schema load {schema_load:.3f} s; "
          f"target <= {TARGET_S} s: {'met' if median <= TARGET_S else 'MISSED'}")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
