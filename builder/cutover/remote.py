"""One command on another host for the cutover: `local` (bash here) or
`ssh:[user@]host` with the manifest's allow-listed ssh options, both checked
again at run time (an option such as ProxyCommand, or a "host" that is an
option, would run a local command)."""

from __future__ import annotations

from builder.errors import UserError
from builder.manifest.paths import HOST_SPEC
from builder.manifest.ssh_options import ssh_options_problem
from builder.proc import run


def command(target: str, options: tuple[str, ...], script: str, *, setting: str,
            input: str | None = None, timeout: float = 60) -> str:
    """Run `script` (a shell line) on `target`; its stdout. Raises
    builder.proc.CommandError when it fails (the caller says what failed)."""
    if target == "local":
        return run(["bash", "-c", script], input=input, capture=True, timeout=timeout).stdout
    host = target.removeprefix("ssh:")
    if not target.startswith("ssh:") or not HOST_SPEC.fullmatch(host):
        raise UserError(f"cutover.{setting} {target[:80]!r}: the host must be `ssh:host` or "
                        "`ssh:user@host` (letters, digits, ._-)")
    problem = ssh_options_problem(options)
    if problem:
        raise UserError(f"cutover.{setting}_ssh_options: {problem}")
    return run(["ssh", "-o", "BatchMode=yes", *options, "--", host, script], input=input,
               capture=True, timeout=timeout).stdout
