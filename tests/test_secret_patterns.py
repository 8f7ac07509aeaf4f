"""The literal-secret patterns (builder/manifest/secrets.py) in their fast form
answer exactly as their plain regexes: `(?i)` replaced by lower-cased text, a
needle tested first, the AWS key's prefix before its look-behind, a possessive
scheme. The plain forms below are the reference, run on the same text."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest

from builder.manifest import secrets
from builder.manifest.secrets import KINDS, SecretPattern

#: the obvious (slow) form of each pattern: the oracle
REFERENCE: dict[str, re.Pattern[bytes]] = {
    "a private key": re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "an AWS access key id": re.compile(
        rb"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "a literal password, token or key (name=value)": re.compile(
        rb"""(?i)(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|access[_-]?key|"""
        rb"""private[_-]?key|client[_-]?secret)["']?\s*[:=]\s*["']?(?![$%{<(:*\s"'`])"""
        rb"""(?!(?:None|null|nil|true|false|self\.)(?![\w])|[A-Za-z_][\w.]*\()"""
        rb"""([^\s"'`,;)&]{4,})"""),
    "a URL with a password in it (user:password@)": re.compile(
        rb"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?![$%{<(])[^\s/@'\"$%{}]+@"),
}

PIECES = [
    b"password", b"PassWord", b"PASSWD", b"passphrase", b"Secret", b"TOKEN", b"api_key",
    b"Api-Key", b"apikey", b"access_key", b"ACCESS-KEY", b"private_key", b"client_secret",
    b"= ", b"=", b": ", b":", b" = ", b'"', b"'", b"`", b"$X", b"%{x}", b"{{ x }}", b"<x>",
    b"(x)", b"*", b"None", b"NULL", b"Nil", b"true", b"self.x", b"fetch(", b"Get.it(",
    b"hunter2", b"Zx81Kq0PaaBB", b"s3cr3t!", b"abc", b"\n", b"\t", b" ", b",", b";", b"&",
    b"AKIA", b"ASIA", b"AIPA", b"ABCDEFGHIJKLMNOP", b"0123456789ABCDEF", b"X", b"7", b"ak",
    b"https://", b"HTTP://", b"git+ssh://", b"1http://", b"://", b"user", b"u", b"@", b"host",
    b"-----BEGIN ", b"RSA ", b"OPENSSH ", b"PRIVATE KEY-----", b"private key-----",
    "é".encode(), b"\xff", b"\x00",
]


def _samples() -> list[bytes]:
    rng = random.Random(16)
    made = [b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
            for _ in range(20000)]
    made += [b"".join(pair) for pair in itertools.product(PIECES, repeat=2)]
    made += [
        b"AKIAABCDEFGHIJKLMNOP", b"XAKIAABCDEFGHIJKLMNOP", b" AKIAABCDEFGHIJKLMNOP ",
        b"AKIAABCDEFGHIJKLMNOPQ", b"\nASIA0123456789ABCDEF\n", b"aAKIAABCDEFGHIJKLMNOP",
        b"x://u:p@h", b"a1://u:pw@h", b"https://user:pa55@host/", b"HTTPS://user:pa55@host/",
        b"x1https://u:p@h",
        b"https://user:$PW@host/", b"postgres://u:%{p}@h", b"TOKEN=None", b"token = nonesuch",
        b"Password: self.get()", b"PASSWORD='Pa55word99'", b"--password=hunter22",
        b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN  PRIVATE KEY-----",
    ]
    return made


@pytest.mark.parametrize("what", sorted(REFERENCE))
def test_fast_form_answers_as_the_plain_regex(what: str) -> None:
    fast = dict((kind, pattern) for pattern, kind in KINDS)[what]
    reference = REFERENCE[what]
    differ = [s for s in _samples() if fast.search(s) != bool(reference.search(s))]
    assert not differ, differ[:5]
    assert any(reference.search(s) for s in _samples())  # the samples reach the pattern


def test_rendered_user_data_gets_the_same_verdicts() -> None:
    """Every file validate scans (all manifests, all roles, fried and baked)."""
    from builder.manifest import load_manifest
    from builder.render.app import own_app
    from builder.render.assemble import split_user_data
    from builder.render.role import render_role
    texts = []
    for path in sorted((Path(__file__).resolve().parent.parent / "manifests").glob("*.yaml")):
        manifest = load_manifest(path)
        modes = (True,) if own_app(manifest) else (False, True)  # as validate renders
        for role in manifest.roles:
            for baked in modes:
                user_data = render_role(manifest, role, baked=baked).user_data
                texts += [part.content for part in split_user_data(user_data)]
    assert texts
    for pattern, what in KINDS:
        assert [pattern.search(t) for t in texts] == \
            [bool(REFERENCE[what].search(t)) for t in texts], what


def test_every_kind_has_a_reference() -> None:
    assert {what for _, what in KINDS} == set(REFERENCE)
    assert all(isinstance(p, SecretPattern) for p, _ in KINDS)
    assert secrets.secret_kind("password: hunter22") == KINDS[3][1]
