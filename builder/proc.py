"""The one subprocess wrapper: logs the command, raises with its exit code."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.errors import UserError

log = logging.getLogger("amibake.run")

Cmd = Sequence[str | os.PathLike[str]]


class CommandError(UserError):
    """A command amibake ran exited non-zero."""

    def __init__(self, cmd: Cmd, returncode: int, stderr: str = "") -> None:
        joined = shlex.join(str(c) for c in cmd)
        tail = stderr.strip().splitlines()[-1:] if stderr else []
        detail = f": {tail[0]}" if tail else ""
        super().__init__(
            f"command failed with exit code {returncode}: {joined}{detail}",
            hint="run with --debug to see the command's full output",
        )
        self.cmd = [str(c) for c in cmd]
        self.returncode = returncode
        self.stderr = stderr


def run(
    cmd: Cmd,
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    user: str | int | None = None,
    group: str | int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (never through a shell), logging it; text mode.

    With capture=True stdout and stderr are returned; otherwise stdout goes to
    ours and stderr is still captured so a failure can quote its last line.
    `env` is added to the current environment.
    """
    argv = [str(c) for c in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    text_input = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            argv,
            input=text_input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",  # output read back from a program is not trusted to be UTF-8
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
            user=user,
            group=group,
        )
    except FileNotFoundError as exc:
        raise UserError(
            f"command not found: {argv[0]}",
            hint="run `make setup` to install amibake's system packages",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise UserError(
            f"command timed out after {timeout:g} s: {shlex.join(argv)}",
            hint="the machine may be overloaded; retry, or raise the timeout",
        ) from exc
    if proc.returncode != 0:
        log.debug("exit %d: %s\n%s", proc.returncode, shlex.join(argv), proc.stderr)
        if check:
            raise CommandError(argv, proc.returncode, proc.stderr or "")
    return proc
