"""The maintenance page: rendered from the notice, switched on and off
through the web role's nginx maintenance flag (nginx answers 503 with
Retry-After while the flag file exists), locally or over SSH."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from builder.atomic import write_atomically
from builder.cutover import remote
from builder.cutover.config import CutoverConfig
from builder.cutover.plan import announced_window, format_time
from builder.errors import UserError
from builder.manifest.paths import unsafe_path_reason
from builder.proc import CommandError
from builder.render.templates import render_template


def render_page(cfg: CutoverConfig) -> str:
    start, end = announced_window(cfg.cutover)
    return render_template(
        "maintenance.html.j2",
        app_name=cfg.manifest.app.name,
        start=format_time(start),
        end=format_time(end),
        contact=cfg.cutover.notice.contact,
    ).decode()


def _write_local(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, content, mode=0o644)  # nginx (another user) reads it


def _ssh(target: str, options: tuple[str, ...], script: str, input: str | None = None) -> None:
    try:
        remote.command(target, options, script, setting="old_web", input=input)
    except CommandError as err:
        raise UserError(f"maintenance switch on {target.removeprefix('ssh:')} failed: "
                        f"{err.message}",
                        hint="check SSH access (cutover.old_web) and sudo rights") from err


def switch(cfg: CutoverConfig, on: bool) -> str:
    """Write the page, then create (on) or remove (off) the flag. Idempotent."""
    flag, page = cfg.nginx.maintenance_flag, cfg.nginx.maintenance_page
    for name, path in (("maintenance_flag", flag), ("maintenance_page", page)):
        reason = unsafe_path_reason(path)  # again at run time: this writes as root
        if reason:
            raise UserError(f"components.nginx.{name} {path[:80]!r}: {reason}",
                            hint="a path of the site's own, e.g. /var/www/maintenance/on")
    target = cfg.cutover.old_web
    from builder.cutover import banner  # the notice banner goes when the page comes (or rollback)

    # on: the banner first (not on the maintenance page); off (a rollback): the
    # site back first, then the banner that a reload failure could keep
    unbanner = banner.off_script(cfg)
    if target == "local":
        if on:
            banner.switch(cfg, False, check=False)
            _write_local(Path(page), render_page(cfg))
            Path(flag).parent.mkdir(parents=True, exist_ok=True)
            Path(flag).touch()
        else:
            Path(flag).unlink(missing_ok=True)
            banner.switch(cfg, False, check=False)
    elif target.startswith("ssh:"):
        q = shlex.quote
        if on:
            script = (f"{unbanner} && "
                      f"mkdir -p {q(os.path.dirname(page))} {q(os.path.dirname(flag))} && "
                      f"cat > {q(page)}.tmp && mv {q(page)}.tmp {q(page)} && touch {q(flag)}")
            _ssh(target, cfg.cutover.old_web_ssh_options, script, input=render_page(cfg))
        else:
            _ssh(target, cfg.cutover.old_web_ssh_options, f"rm -f {q(flag)} && {unbanner}")
    else:
        raise UserError(f"cutover.old_web must be `local` or `ssh:user@host`, not {target!r}")
    return f"maintenance {'on' if on else 'off'} ({flag} on {target})"
