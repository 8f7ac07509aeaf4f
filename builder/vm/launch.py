"""Local launch: a stored image booted in the background, a tiny local EC2.

`launch_local` starts a detached supervisor process (builder.vm.supervise)
that runs the IMDS emulator and qemu for one instance and kills the VM when
it is told to stop (SIGTERM) or dies. Each instance has a directory under
the state root ($AMIBAKE_STATE_DIR, else ~/.local/state/amibake/instances):

    <instance-id>/launch.json    what to boot (written by launch_local)
    <instance-id>/instance.json  what runs: pids, ports (written by the supervisor)
    <instance-id>/id_ed25519     the SSH key the instance trusts
    <instance-id>/serial.log     the console

Only amibake's own instances are touched: `stop_instance` takes an id of the
form `launch` gives (`i-` and 17 hex digits), naming a real directory (not a
link) directly under the state root that holds the supervisor's
instance.json for that same id. State files are created 0600 (the launch
file holds the instance's secrets) and directories 0700, from the start.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from builder.atomic import open_private, write_atomically
from builder.errors import UserError
from builder.manifest.model import Manifest
from builder.vm.firmware import BootMode
from builder.vm.ssh import generate_key
from builder.wait import NotYet, Waiter, WaitTimeout, wait_for

SUPERVISOR_MODULE = "builder.vm.supervise"
#: the ids `launch` gives (builder.vm.metadata.new_instance_id)
INSTANCE_ID = re.compile(r"i-[0-9a-f]{17}", re.ASCII)


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


def _own_dir(root: Path, instance_id: str) -> Path | None:
    """`root/instance_id` when the id has launch's form and names a real
    directory (not a link) directly under `root`; else None."""
    if not INSTANCE_ID.fullmatch(instance_id):
        return None
    idir = root / instance_id
    try:
        mode = os.lstat(idir).st_mode
    except OSError:
        return None
    return idir if stat.S_ISDIR(mode) else None


def read_instance(instance_dir: Path) -> LocalInstance | None:
    """The instance in `instance_dir`, or None when it never got running
    (or the directory is not one amibake's supervisor wrote)."""
    try:
        fd = os.open(instance_dir / "instance.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            doc = json.loads(fh.read(64 * 1024))
        if not isinstance(doc, dict) or doc.get("instance_id") != instance_dir.name:
            return None
        for key in ("supervisor_pid", "qemu_pid", "ssh_port", "http_port", "imds_port"):
            if not isinstance(doc.get(key), int):
                return None
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
    dirs = [_own_dir(root, d.name) for d in sorted(root.iterdir())]
    found = [read_instance(d) for d in dirs if d is not None]
    return [i for i in found if i is not None]


def launch_local(
    image: ImageLike, manifest: Manifest, role: str, *, root: Path | None = None,
    boot: BootMode = "uefi", image_label: str = "", start_timeout: float = 60,
    user_data: bytes | None = None, secrets: dict[str, str] | None = None,
    private_network: str | None = None, instance_id: str | None = None,
) -> LocalInstance:
    """Boot `image` in `role` in the background; returns once qemu runs.

    The instance keeps running after this process exits; stop it with
    `stop_instance`. The guest is still booting when this returns. A local stack
    (builder/vm/stack_launch.py) gives its own `user_data`, the `secrets` its VMs share
    and the `private_network` they are on.
    """
    from builder.vm.metadata import local_user_data, new_instance_id, secret_values

    if role not in manifest.roles:
        raise UserError(f"unknown role {role!r}",
                        hint=f"roles in {manifest.source}: {', '.join(manifest.roles)}")
    disk = Path(image.disk_path).resolve()
    if not disk.is_file():
        raise UserError(f"image disk not found: {disk}", hint="run `make image` first")
    root = root or state_root()
    instance_id = instance_id or new_instance_id()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    idir = root / instance_id
    idir.mkdir(mode=0o700)
    try:
        key = generate_key(idir / "id_ed25519", comment=f"amibake-{instance_id}")
        if user_data is None:
            user_data = local_user_data(manifest, role, baked=True)
        label = image_label or f"{manifest.name} {manifest.version}"
        launch = {
            "instance_id": instance_id, "role": role, "image": label, "disk": str(disk),
            "boot": boot, "instance_type": manifest.roles[role].instance_type,
            "login_user": manifest.image.login_user, "public_key": key.openssh_public(),
            "user_data_b64": base64.b64encode(user_data).decode(),
            "secrets": secret_values(manifest) if secrets is None else secrets,
            "private_network": private_network,
        }
        write_atomically(idir / "launch.json", json.dumps(launch, indent=2), mode=0o600)
        with os.fdopen(open_private(idir / "supervisor.log"), "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(idir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=_env_with_project_path(),
            )

        def started() -> LocalInstance:
            inst = read_instance(idir)
            if inst is not None:
                return inst
            if proc.poll() is not None:  # raised at once: it will not start now
                tail = (idir / "supervisor.log").read_text(errors="replace").strip()
                raise UserError(
                    f"local instance {instance_id} did not start: "
                    f"{tail.splitlines()[-1] if tail else 'no output'}",
                    hint=f"see {idir / 'supervisor.log'}",
                )
            raise NotYet("the supervisor has not written instance.json yet")

        interval = 0.2
        try:
            return wait_for(started, Waiter(
                f"local instance {instance_id} to start", interval=interval,
                attempts=max(1, int(start_timeout / interval) + 1), timeout=start_timeout))
        except WaitTimeout:
            _terminate(proc.pid, idir)
            raise UserError(f"local instance {instance_id} did not start within "
                            f"{start_timeout:g} s", hint=f"see {idir / 'supervisor.log'}"
                            ) from None
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

    def gone() -> None:
        if _pid_is_supervisor(pid, idir):
            raise NotYet(f"supervisor {pid} still running")

    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(gone, Waiter(f"supervisor {pid} to stop", interval=0.1,
                              attempts=int(timeout / 0.1) + 1, timeout=timeout))
    except WaitTimeout:
        os.kill(pid, signal.SIGKILL)  # qemu follows: it dies with its parent


def stop_instance(instance_id: str, root: Path | None = None) -> LocalInstance:
    """Stop a local instance and remove its state directory."""
    root = root or state_root()
    idir = _own_dir(root, instance_id)
    inst = read_instance(idir) if idir is not None else None
    if idir is None or inst is None:
        known = ", ".join(i.instance_id for i in list_instances(root)) or "none"
        shown = instance_id if instance_id.isprintable() else repr(instance_id)
        raise UserError(f"no local instance {shown[:80]}"
                        + ("" if INSTANCE_ID.fullmatch(instance_id)
                           else " (ids look like i- and 17 hex digits)"),
                        hint=f"known instances: {known}")
    _terminate(inst.supervisor_pid, idir)
    shutil.rmtree(idir, ignore_errors=True)
    return inst
