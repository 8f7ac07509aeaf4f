"""The reference verdict: `cloud-init schema --config-file` as the image runs it.

The extracted Debian cloud-init CLI, run by the host's own /usr/bin/python3
(bookworm's Python 3.11) with `-S` (no site: none of the host's installed
packages) and PYTHONPATH naming only the extracted Debian packages, so it
sees exactly bookworm's cloud-init, PyYAML, jsonschema and format checkers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from builder.validate.schema import DIST_PACKAGES, cloudinit_root

HOST_PYTHON = "/usr/bin/python3"


def cli_verdict(path: Path) -> tuple[bool, str]:
    """(valid?, output) of `cloud-init schema --config-file PATH`."""
    root = cloudinit_root()
    result = subprocess.run(
        [HOST_PYTHON, "-S", str(root / "usr/bin/cloud-init"), "schema", "--config-file",
         str(path)],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
             "PYTHONPATH": str(root / DIST_PACKAGES)},
    )
    return result.returncode == 0, result.stdout + result.stderr
