"""The user notice at the notice time (`amibake cutover notify`, the
runbook's first entry, `notice.lead_days` before the window): the banner on
the old site's pages (unless `notice.banner: false`), then the mail (when
`notice.mail` is set). The banner goes first: it is undone by a re-run's
`banner-off` or by the maintenance page, while a mail cannot be taken back,
so a broken banner stops the run before anyone is written to. Until the
window the banner stays; the maintenance page going up (or a rollback)
takes it down."""

from __future__ import annotations

from builder.cutover import banner, notice_mail
from builder.cutover.config import CutoverConfig
from builder.errors import UserError


def _nothing(cfg: CutoverConfig) -> None:
    if not cfg.cutover.notice.banner and cfg.cutover.notice.mail is None:
        raise UserError("cutover.notice: nothing to deliver (banner: false and no mail)",
                        hint="set notice.mail, or notice.banner: true")


def notify(cfg: CutoverConfig, *, password: str | None = None) -> list[str]:
    """Deliver the notice; what was done, one line each."""
    _nothing(cfg)
    done = []
    if cfg.cutover.notice.banner:
        done.append(banner.switch(cfg, True))
    if cfg.cutover.notice.mail is not None:
        done.append(notice_mail.send(cfg, password=password))
    return done


def would(cfg: CutoverConfig) -> list[str]:
    """What `notify` would do (its --dry-run), nothing sent or written."""
    _nothing(cfg)
    out = []
    if cfg.cutover.notice.banner:
        out.append(f"would put the notice banner on {cfg.cutover.old_site} "
                   f"({banner.banner_file(cfg)} on {cfg.cutover.old_web}):\n"
                   + banner.banner_conf_text(cfg))
    mail = cfg.cutover.notice.mail
    if mail is not None:
        to = notice_mail.recipients(mail.recipients_file)
        msg = notice_mail.message(cfg, mail)
        out.append(f"would send to {len(to)} recipient(s): {msg['Subject']}\n\n"
                   + msg.get_content())
    return out
