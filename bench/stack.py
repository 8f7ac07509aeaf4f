"""Benchmark: the CloudFormation template of every manifest with a `stack:` section.

Times `amibake stack template` (load + template + YAML) per manifest, repeated,
and cfn-lint (the real linter, in-process, informational rules included) on
each template, after one warm-up pass (cfn-lint loads its resource specs
once; timed apart). Prints the figures and writes bench/results/stack.json.
The local split-stack boot (web → app → db VMs against all-in-one) is not
measured yet.
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
from builder.stack.template import template_yaml  # noqa: E402


def _timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20, help="template generations")
    parser.add_argument("--lint-repeat", type=int, default=3, help="cfn-lint runs")
    args = parser.parse_args()
    from cfnlint.api import ManualArgs, lint

    paths = [p for p in sorted((ROOT / "manifests").glob("*.yaml"))
             if load_manifest(p).stack is not None]
    if not paths:
        print("no manifest in manifests/ has a stack: section")
        return 1
    config = ManualArgs(regions=["us-east-1"], include_checks=["I"])
    start = time.perf_counter()
    lint("AWSTemplateFormatVersion: '2010-09-09'\nResources: {}\n", config=config)
    lint_load = time.perf_counter() - start

    per_manifest = []
    problems = 0
    for path in paths:
        text = template_yaml(load_manifest(path))
        generate = _timed(lambda p=path: template_yaml(load_manifest(p)), args.repeat)
        findings: list[str] = []

        def run_lint(t: str = text, out: list[str] = findings) -> None:
            out[:] = [f"{m.rule.id} {m.message}" for m in lint(t, config=config)]

        linting = _timed(run_lint, args.lint_repeat)
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
              f"{statistics.median(generate) * 1000:.1f} ms over {args.repeat}, cfn-lint median "
              f"{statistics.median(linting):.2f} s over {args.lint_repeat}, "
              f"{len(findings)} finding(s)")
    result = {
        "benchmark": "stack",
        "what": "amibake stack template (load + template + YAML) and cfn-lint (informational "
                "rules included) per manifest with a stack: section",
        "manifests": per_manifest,
        "cfn_lint_first_load_s": round(lint_load, 4),
        "repeat": args.repeat,
        "lint_repeat": args.lint_repeat,
        "problems": problems,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = ROOT / "bench" / "results" / "stack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"cfn-lint's first load {lint_load:.2f} s; wrote {out.relative_to(ROOT)}")
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
