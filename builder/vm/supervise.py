"""The background keeper of one local instance: IMDS emulator + qemu.

Started detached by `launch_local` as `python -m builder.vm.supervise DIR`.
Reads DIR/launch.json, serves the instance's metadata, boots the VM, writes
DIR/instance.json and waits. SIGTERM (or SIGINT) stops the VM and removes
its overlay; if this process is killed outright, qemu dies with it.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from builder.atomic import write_atomically
from builder.vm.imds import imds_server
from builder.vm.metadata import LocalInstanceIdentity
from builder.vm.qemu import Vm, VmSpec


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def supervise(idir: Path) -> int:
    launch = json.loads((idir / "launch.json").read_text())
    identity = LocalInstanceIdentity(
        instance_id=launch["instance_id"], role=launch["role"],
        instance_type=launch["instance_type"], public_key=launch["public_key"],
        user_data=base64.b64decode(launch["user_data_b64"]), secrets=launch["secrets"],
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with imds_server(identity) as imds:
        spec = VmSpec(disk=Path(launch["disk"]), imds_port=imds.port,
                      instance_id=identity.instance_id, boot=launch["boot"],
                      instance_type=identity.instance_type, timeout=math.inf,
                      private_network=launch.get("private_network"))
        with Vm(spec, idir) as vm:
            doc = {
                "instance_id": identity.instance_id, "role": identity.role,
                "image": launch["image"], "boot": launch["boot"],
                "supervisor_pid": os.getpid(), "qemu_pid": vm.pid,
                "ssh_port": vm.ports.ssh, "http_port": vm.ports.http, "imds_port": imds.port,
                "login_user": launch["login_user"],
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            write_atomically(idir / "instance.json", json.dumps(doc, indent=2), mode=0o600)
            assert vm.proc is not None
            code = vm.proc.wait()
            print(f"qemu exited with code {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
