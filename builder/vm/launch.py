"""Local launch: a stored image booted in the background, a tiny local EC2.

`launch_local` starts a detached supervisor process (builder.vm.supervise)
that runs the IMDS emulator and qemu for one instance and kills the VM when
it is told to stop (SIGTERM) or dies. Each instance has a directory under
the state root ($AMIBAKE_STATE_DIR, else ~/.local/state/amibake/instances):

    <instance-id>/launch.json    what to boot (written by launch_local)
    <instance-id>/instance.json  what runs: pids, ports (written by the supervisor)
    <instance-id>/id_ed25519     the SSH key the instance trusts
    <instance-id>/serial.log     the console
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.vm.firmware import BootMode
from builder.vm.ssh import generate_key

SUPERVISOR_MODULE = "builder.vm.supervise"


class ImageLike(Protocol):
    """What launch needs of a stored image (builder.store.StoredImage)."""

    @property
    def disk_path(self) -> Path: ...


def state_root() -> Path:
    env = os.environ.get("AMIBAKE_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "amibake" / "instances"


@dataclass(frozen=True)
class LocalInstance:
    """A locally launched instance, as its state directory describes it."""

    instance_id: str
    role: str
    image: str
    dir: Path
    supervisor_pid: int
    qemu_pid: int
    ssh_port: int
    http_port: int
    imds_port: int
    login_user: str
    boot: str
    started_at: str
    running: bool

    @property
    def ssh_key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def ssh_command(self) -> str:
        return (f"ssh -i {self.ssh_key} -p {self.ssh_port} -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null {self.login_user}@127.0.0.1")

    def as_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id, "role": self.role, "image": self.image,
            "state": "running" if self.running else "exited",
            "ssh_port": self.ssh_port, "http_port": self.http_port,
            "imds_port": self.imds_port, "qemu_pid": self.qemu_pid,
            "supervisor_pid": self.supervisor_pid, "boot": self.boot,
            "started_at": self.started_at, "ssh_key": str(self.ssh_key),
            "serial_log": str(self.serial_log), "ssh": self.ssh_command(),
            "url": f"http://127.0.0.1:{self.http_port}/",
        }


def _pid_is_supervisor(pid: int, instance_dir: Path) -> bool:
    """True when `pid` is alive and is the supervisor of `instance_dir` (no pid reuse)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and SUPERVISOR_MODULE.encode() in args \
        and str(instance_dir).encode() in args


def read_instance(instance_dir: Path) -> LocalInstance | None:
    """The instance in `instance_dir`, or None when it never got running."""
    try:
        doc = json.loads((instance_dir / "instance.json").read_text())
    except (OSError, ValueError):
        return None
    return LocalInstance(
        instance_id=doc["instance_id"], role=doc["role"], image=doc["image"],
        dir=instance_dir, supervisor_pid=doc["supervisor_pid"], qemu_pid=doc["qemu_pid"],
        ssh_port=doc["ssh_port"], http_port=doc["http_port"], imds_port=doc["imds_port"],
        login_user=doc["login_user"], boot=doc["boot"], started_at=doc["started_at"],
        running=_pid_is_supervisor(doc["supervisor_pid"], instance_dir),
    )


def list_instances(root: Path | None = None) -> list[LocalInstance]:
    root = root or state_root()
    if not root.is_dir():
        return []
    found = [read_instance(d) for d in sorted(root.iterdir()) if d.is_dir()]
    return [i for i in found if i is not None]


def launch_local(
    image: ImageLike, manifest: Manifest, role: str, *, root: Path | None = None,
    boot: BootMode = "uefi", image_label: str = "", start_timeout: float = 60,
) -> LocalInstance:
    """Boot `image` in `role` in the background; returns once qemu runs.

    The instance keeps running after this process exits; stop it with
    `stop_instance`. The guest is still booting when this returns.
    """
    from builder.vm.metadata import local_user_data, new_instance_id, secret_values

    if role not in manifest.roles:
        raise UserError(f"unknown role {role!r}",
                        hint=f"roles in {manifest.source}: {', '.join(manifest.roles)}")
    disk = Path(image.disk_path).resolve()
    if not disk.is_file():
        raise UserError(f"image disk not found: {disk}", hint="run `make image` first")
    root = root or state_root()
    instance_id = new_instance_id()
    idir = root / instance_id
    idir.mkdir(parents=True)
    try:
        key = generate_key(idir / "id_ed25519", comment=f"amibake-{instance_id}")
        user_data = local_user_data(manifest, role, baked=True)
        label = image_label or f"{manifest.name} {manifest.version}"
        launch = {
            "instance_id": instance_id, "role": role, "image": label, "disk": str(disk),
            "boot": boot, "instance_type": manifest.roles[role].instance_type,
            "login_user": manifest.image.login_user, "public_key": key.openssh_public(),
            "user_data_b64": base64.b64encode(user_data).decode(),
            "secrets": secret_values(manifest),
        }
        (idir / "launch.json").write_text(json.dumps(launch, indent=2))
        os.chmod(idir / "launch.json", 0o600)
        with open(idir / "supervisor.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(idir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_env_with_project_path(),
            )
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            inst = read_instance(idir)
            if inst is not None:
                return inst
            if proc.poll() is not None:
                tail = (idir / "supervisor.log").read_text(errors="replace").strip()
                raise UserError(
                    f"local instance {instance_id} did not start: "
                    f"{tail.splitlines()[-1] if tail else 'no output'}",
                    hint=f"see {idir / 'supervisor.log'}",
                )
            time.sleep(0.2)
        _terminate(proc.pid, idir)
        raise UserError(f"local instance {instance_id} did not start within "
                        f"{start_timeout:g} s", hint=f"see {idir / 'supervisor.log'}")
    except BaseException:
        shutil.rmtree(idir, ignore_errors=True)
        raise


def _env_with_project_path() -> dict[str, str]:
    env = dict(os.environ)
    project = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))
    return env


def _terminate(pid: int, idir: Path, timeout: float = 30) -> None:
    """SIGTERM the supervisor (it kills qemu), SIGKILL after `timeout`."""
    if not _pid_is_supervisor(pid, idir):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_is_supervisor(pid, idir):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)  # qemu follows: it dies with its parent


def stop_instance(instance_id: str, root: Path | None = None) -> LocalInstance:
    """Stop a local instance and remove its state directory."""
    root = root or state_root()
    idir = root / instance_id
    inst = read_instance(idir)
    if inst is None:
        known = ", ".join(i.instance_id for i in list_instances(root)) or "none"
        raise UserError(f"no local instance {instance_id}", hint=f"known instances: {known}")
    _terminate(inst.supervisor_pid, idir)
    shutil.rmtree(idir, ignore_errors=True)
    return inst
