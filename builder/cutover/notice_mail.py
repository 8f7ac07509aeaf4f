"""The user notice sent by mail (`amibake cutover notify`): the runbook's
notice text, from `cutover.notice.mail.sender`, to every address of the
recipients file, over SMTP with STARTTLS (certificate checked) unless the
manifest turns it off.

Recipients go in the envelope only (the To header names the sender), so no
one receives the list. The recipients file is read bounded; a line that is
not a plain address stops everything with its file:line:col before any
connection is made."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from builder.cutover import plan
from builder.cutover.config import CutoverConfig
from builder.errors import Location, Problem, UserError
from builder.inputs import read_text_input
from builder.manifest import field_checks as fc
from builder.manifest.model import NoticeMail

MAX_RECIPIENTS_FILE = 4 * 2**20
#: recipients per SMTP transaction (servers commonly accept 100)
BATCH = 50


def recipients(path: Path | str) -> list[str]:
    """The addresses of the recipients file, in order, each once."""
    text = read_text_input(path, MAX_RECIPIENTS_FILE, "recipients list")
    out: list[str] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        local, at, domain = line.rpartition("@")
        address = f"{local}{at}{domain.lower()}"
        reason = fc.email(address)
        if reason:
            col = len(raw) - len(raw.lstrip()) + 1
            problems.append(Problem(Location(str(path), number, col), reason))
        elif address not in out:
            out.append(address)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{first.location}: {first.message}{more}",
                        hint="one plain address a line; nothing was sent", problems=tuple(problems))
    if not out:
        raise UserError(f"{path}: no recipients", hint="one address a line; nothing was sent")
    return out


def message(cfg: CutoverConfig, mail: NoticeMail) -> EmailMessage:
    cut = cfg.cutover
    start, _ = plan.window(cut)
    msg = EmailMessage()
    msg["From"] = mail.sender
    msg["To"] = mail.sender  # the recipients are in the envelope only
    msg["Subject"] = mail.subject or (
        f"{cfg.manifest.app.name}: planned maintenance {plan.format_time(start, 'start')}")
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=mail.sender.rpartition("@")[2])
    msg.set_content(plan.notice_text(cfg.manifest.app.name, cut) + "\n")
    return msg


def send(cfg: CutoverConfig, *, password: str | None = None,
         context: ssl.SSLContext | None = None) -> str:
    """Send the notice; returns what was done. Every address refused by the
    server is named (the others got it)."""
    mail = cfg.cutover.notice.mail
    if mail is None:
        raise UserError("cutover.notice.mail is not set",
                        hint="add smtp_host, sender and recipients_file to send the notice")
    to = recipients(mail.recipients_file)
    msg = message(cfg, mail)
    refused: dict[str, object] = {}
    where = f"{mail.smtp_host}:{mail.smtp_port}"
    try:
        with smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=30) as smtp:
            smtp.ehlo()
            if mail.starttls:
                smtp.starttls(context=context or ssl.create_default_context())
                smtp.ehlo()
            if mail.username:
                if password is None:
                    raise UserError("cutover.notice.mail.username needs a password",
                                    hint="set notice.mail.password: {ssm: NAME}")
                smtp.login(mail.username, password)
            for i in range(0, len(to), BATCH):
                try:
                    refused.update(smtp.send_message(msg, from_addr=mail.sender,
                                                     to_addrs=to[i:i + BATCH]))
                except smtplib.SMTPRecipientsRefused as exc:  # the whole batch
                    refused.update(exc.recipients)
    except smtplib.SMTPNotSupportedError as exc:
        raise UserError(f"SMTP server {where} does not offer STARTTLS",
                        hint="use its submission port, or notice.mail.starttls: false "
                             "on a trusted network") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise UserError(f"SMTP server {where}: {exc}",
                        hint="check notice.mail (host, port, login); addresses before a "
                             "failed batch may have received the notice") from exc
    sent = len(to) - len(refused)
    if refused:
        raise UserError(f"notice sent to {sent} of {len(to)} recipient(s); refused: "
                        + ", ".join(sorted(refused)[:10]),
                        hint="fix those addresses in the recipients file")
    return f"notice sent to {sent} recipient(s) through {where}"
