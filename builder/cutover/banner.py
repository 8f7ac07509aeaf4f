"""The user notice as a banner on the OLD site, from the notice time until
the window (`amibake cutover notify` puts it up with the mail;
`banner-on|banner-off MANIFEST` by hand).

The web role's nginx includes `amibake-banner*.conf` beside the maintenance
flag (builder/render/nginx.py), in its server block and in the location that
proxies to the app; `on` writes there one `sub_filter` that puts the banner
before `</body>` of every HTML page, and asks the app for uncompressed
answers (`proxy_set_header Accept-Encoding ""`: sub_filter cannot read a
gzip'd body; nginx compresses for the client after the substitution); `off`
removes it. Each then runs `cutover.old_web_reload` on old_web (through the
maintenance machinery's remote.command) and checks the old site's answer.
The maintenance page going up (and a rollback) takes the banner down first.

The banner is HTML from an autoescaped template (the notice's text escaped),
made one line, `$` written as `&#36;` (nginx expands `$` and has no escape
for it), then quoted as an nginx argument; what cannot be quoted is refused
with one line before anything is written.
"""

from __future__ import annotations

import shlex

from builder.cutover import remote, verify
from builder.cutover.config import CutoverConfig
from builder.cutover.plan import announced_window, format_time
from builder.errors import UserError
from builder.manifest.paths import unsafe_path_reason
from builder.proc import CommandError
from builder.render import quoting
from builder.render.nginx import banner_conf
from builder.render.templates import render_template
from builder.wait import NotYet, Waiter, wait_for

#: in the banner's HTML: how the check recognises it on a page
MARKER = b'id="amibake-notice"'


def banner_html(cfg: CutoverConfig) -> str:
    start, end = announced_window(cfg.cutover)
    html = render_template("cutover/banner.html.j2", app_name=cfg.manifest.app.name,
                           start=format_time(start), end=format_time(end),
                           contact=cfg.cutover.notice.contact).decode()
    # HTML treats a line break as a space: one line; `$` as its character reference
    return " ".join(html.split()).replace("$", "&#36;")


def banner_conf_text(cfg: CutoverConfig) -> str:
    try:
        replacement = quoting.nginx(banner_html(cfg) + "</body>")
    except quoting.Unquotable as exc:
        raise UserError(f"{cfg.manifest.where('cutover.notice')}: the notice banner cannot "
                        f"be written into nginx's configuration: {exc}",
                        hint="the notice's text must be printable, one line") from None
    # valid in the server block and in a proxying location (the include is in
    # both: a location with proxy_set_header lines of its own inherits none)
    return ("# amibake cutover notify: the user notice before the window\n"
            f"sub_filter {quoting.nginx('</body>')} {replacement};\nsub_filter_once on;\n"
            'proxy_set_header Accept-Encoding "";\n')


def _run(cfg: CutoverConfig, script: str, input: str | None = None) -> None:
    cut = cfg.cutover
    try:
        remote.command(cut.old_web, cut.old_web_ssh_options, script, setting="old_web",
                       input=input)
    except CommandError as err:
        raise UserError(f"notice banner on {cut.old_web.removeprefix('ssh:')}: {err.message}",
                        hint="check cutover.old_web (SSH access, sudo rights) and "
                             "cutover.old_web_reload") from err


def _shown(cfg: CutoverConfig) -> bool:
    _, _, body = verify.fetch(cfg.cutover.old_site, "/", cfg.server_name)
    return MARKER in body


def banner_file(cfg: CutoverConfig) -> str:
    path = banner_conf(cfg.nginx)
    reason = unsafe_path_reason(path)  # again at run time: this writes as root
    if reason:
        raise UserError(f"components.nginx.maintenance_flag: banner file {path[:80]!r}: "
                        f"{reason}", hint="a path of the site's own, e.g. /var/www/maintenance/on")
    return path


def off_script(cfg: CutoverConfig) -> str:
    """The shell line that removes the banner (and reloads nginx) if it is up:
    the maintenance switch runs it first, in its own command."""
    path = shlex.quote(banner_file(cfg))
    return f"if [ -e {path} ]; then rm -f {path} && {cfg.cutover.old_web_reload}; fi"


def switch(cfg: CutoverConfig, on: bool, *, check: bool = True) -> str:
    """Write (on) or remove (off) the banner's file, reload the old nginx and,
    with `check`, wait until the old site's page shows (hides) it."""
    path = banner_file(cfg)
    if on:
        q, text = shlex.quote, banner_conf_text(cfg)
        _run(cfg, f"cat > {q(path)}.tmp && mv {q(path)}.tmp {q(path)} && "
                  f"{cfg.cutover.old_web_reload}", input=text)
    else:
        _run(cfg, off_script(cfg))
    if check:
        def shown_as_wanted() -> None:
            if _shown(cfg) != on:
                raise NotYet(f"the old site's page {'lacks' if on else 'still shows'} "
                             "the banner")
        wait_for(shown_as_wanted, Waiter(
            f"the notice banner {'on' if on else 'off'} at {cfg.cutover.old_site}",
            # old workers finish their connections after a reload: 3 answers in a row
            # (every 0.2 s: a switch costs 0.4 s of waiting, not 1 s; 20 s as before)
            attempts=100, interval=0.2, successes=3,
            hint="the old nginx needs `include <flag dir>/amibake-banner*.conf;` in its "
                 "server block, and cutover.old_web_reload must reload it"),
                 retry_on=(UserError, OSError))
    return f"notice banner {'on' if on else 'off'} ({path} on {cfg.cutover.old_web})"
