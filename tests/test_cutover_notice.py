"""The user notice by mail, through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from builder.cli import main
from builder.cutover import notice_mail, plan
from builder.cutover.config import CutoverConfig, derive
from builder.errors import UserError
from builder.manifest import load_manifest
from builder.manifest.model import NoticeMail
from builder.ports import free_port
from tests.cutover_fixtures import ROOT


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          options: Any) -> str:
        if address.startswith("bounce@"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield inbox, port
    finally:
        ctl.stop()


def _cfg(port: int, recipients: Path, **mail: Any) -> CutoverConfig:
    m = load_manifest(ROOT / "manifests" / "smallpayroll.yaml")
    assert m.cutover is not None
    spec = NoticeMail(smtp_host="127.0.0.1", smtp_port=port, starttls=False,
                      sender="ops@example.com", recipients_file=str(recipients), **mail)
    cut = replace(m.cutover, notice=replace(m.cutover.notice, mail=spec))
    env = {"AMIBAKE_SECRET_SMALLPAYROLL_OLD_DB_SUPERUSER_PASSWORD": "x",
           "AMIBAKE_SECRET_SMALLPAYROLL_NEW_DB_SUPERUSER_PASSWORD": "x"}
    return derive(replace(m, cutover=cut), environ=env)


def test_notice_reaches_every_recipient_and_no_one_sees_the_list(
    smtp: tuple[Inbox, int], tmp_path: Path,
) -> None:
    inbox, port = smtp
    people = [f"user{i}@example.com" for i in range(120)]  # three SMTP transactions
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("# payroll users\n\n" + "\n".join(people) + "\n  user0@EXAMPLE.com  \n")
    cfg = _cfg(port, rcpt)
    detail = notice_mail.send(cfg)
    assert "sent to 120 recipient(s)" in detail
    got = [r for _, rs, _ in inbox.envelopes for r in rs]
    assert sorted(got) == sorted(people)  # each once
    assert len(inbox.envelopes) == 3
    for sender, _, content in inbox.envelopes:
        assert sender == "ops@example.com"
        msg = message_from_bytes(content, policy=default)
        assert msg["To"] == "ops@example.com" and "user" not in content.decode()
        assert "planned maintenance Saturday, December 5, 2026, 11:59 pm EST" in msg["Subject"]
        body = msg.get_content()
        assert "until Sunday, December 6, 2026, 12:29 am EST" in body
        assert body.replace("\r\n", "\n").strip() == plan.notice_text(
            cfg.manifest.app.name, cfg.cutover).strip()


def test_bad_recipient_line_stops_before_any_mail(smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = smtp
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("a@example.com\n  b@example.com>, evil@example.net\nc@example.com\n")
    with pytest.raises(UserError, match=r"recipients.txt:2:3: .*not a plain mail address"):
        notice_mail.send(_cfg(port, rcpt))
    assert inbox.envelopes == []


def test_refused_recipients_are_named(smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = smtp
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("a@example.com\nbounce@example.com\n")
    with pytest.raises(UserError, match=r"sent to 1 of 2 .*refused: bounce@example.com"):
        notice_mail.send(_cfg(port, rcpt))
    assert [rs for _, rs, _ in inbox.envelopes] == [["a@example.com"]]


def test_starttls_required_but_not_offered(smtp: tuple[Inbox, int], tmp_path: Path) -> None:
    inbox, port = smtp
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("a@example.com\n")
    cfg = _cfg(port, rcpt)
    assert cfg.cutover.notice.mail is not None
    cut = replace(cfg.cutover, notice=replace(cfg.cutover.notice, mail=replace(
        cfg.cutover.notice.mail, starttls=True)))
    with pytest.raises(UserError, match="does not offer STARTTLS"):
        notice_mail.send(replace(cfg, cutover=cut))
    assert inbox.envelopes == []


@pytest.mark.parametrize(("line", "message"), [
    ("      sender: \"ops@example.com\\nBcc: all@example.net\"\n", "not a plain mail address"),
    ("      recipients_file: /etc/shadow\n", "inside /etc"),
    ("      subject: \"Hi\\r\\nBcc: x@example.net\"\n", "one line"),
])
def test_mail_settings_checked_at_load(tmp_path: Path, line: str, message: str) -> None:
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    good = {"smtp_host": "      smtp_host: mail.example.com\n",
            "sender": "      sender: ops@example.com\n",
            "recipients_file": "      recipients_file: /srv/notice/recipients.txt\n"}
    key = line.split(":")[0].strip()
    good[key] = line
    block = "    mail:\n" + "".join(good.values())
    anchor = "  notice:\n"
    start = text.index(anchor)
    end = text.index("\n", text.index("contact:", start)) + 1
    text = text[:end] + block + text[end:]
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(UserError) as info:
        load_manifest(tmp_path / "m.yaml")
    lineno = text[:text.index(line)].count("\n") + 1
    shown = [f"{p.location}: {p.message}" for p in info.value.problems]
    assert len(shown) == 1 and message in shown[0] and f"m.yaml:{lineno}:" in shown[0], shown


def test_notify_dry_run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    rcpt = tmp_path / "recipients.txt"
    rcpt.write_text("a@example.com\nb@example.com\n")
    text = (ROOT / "manifests" / "smallpayroll.yaml").read_text()
    end = text.index("\n", text.index("contact:", text.index("  notice:\n"))) + 1
    text = (text[:end] + "    mail:\n      smtp_host: mail.example.com\n"
            "      sender: ops@example.com\n      recipients_file: " + str(rcpt) + "\n"
            + text[end:])
    (tmp_path / "m.yaml").write_text(text)
    for name in ("OLD", "NEW"):
        monkeypatch.setenv(f"AMIBAKE_SECRET_SMALLPAYROLL_{name}_DB_SUPERUSER_PASSWORD", "x")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    assert main(["cutover", "notify", str(tmp_path / "m.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would send to 2 recipient(s)" in out and "Questions:" in out
