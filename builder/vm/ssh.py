"""SSH into a VM through its forwarded loopback port, with a throw-away key."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.proc import run


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key pair made for one test run or one local instance."""

    private: Path

    @property
    def public(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")

    def openssh_public(self) -> str:
        return self.public.read_text().strip()


def generate_key(path: Path, comment: str = "amibake") -> SshKey:
    """ssh-keygen -t ed25519 without a passphrase, at `path` (and path.pub)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return SshKey(path)


SSH_OPTIONS: tuple[str, ...] = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-o", "IdentitiesOnly=yes",
)


class SshFailed(Exception):
    """ssh could not connect or log in (exit code 255), or timed out."""


@dataclass(frozen=True)
class Ssh:
    """Run commands as `user` on 127.0.0.1:`port`."""

    key: SshKey
    port: int
    user: str = "admin"
    host: str = "127.0.0.1"

    def argv(self, command: str) -> list[str]:
        return ["ssh", *SSH_OPTIONS, "-i", str(self.key.private), "-p", str(self.port),
                f"{self.user}@{self.host}", command]

    def run(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `command` (a shell line on the guest); never raises on its exit code.

        Raises SshFailed when ssh itself fails (255) or the command times out.
        """
        try:
            proc = run(self.argv(command), check=False, capture=True, input="",
                       timeout=timeout)
        except UserError as exc:  # proc.run's timeout
            raise SshFailed(f"ssh timed out after {timeout:g} s: {command}") from exc
        if proc.returncode == 255:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
            raise SshFailed(f"ssh to port {self.port} failed: {tail[0]}")
        return proc

    def output(self, command: str, *, timeout: float = 60) -> str:
        """stdout of `command`, which must exit 0 (else SshFailed with its stderr)."""
        proc = self.run(command, timeout=timeout)
        if proc.returncode != 0:
            raise SshFailed(
                f"`{command}` exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            )
        return proc.stdout
