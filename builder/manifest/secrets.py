"""What a literal secret looks like: the one set of patterns.

Used on every value of a manifest at load time and on rendered user-data by
the lints (builder/validate/lints.py). A finding names the kind of secret,
never the text: the caller says where it is and that it is not shown.
"""

from __future__ import annotations

import re

PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
AWS_KEY = re.compile(
    rb"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"
)
#: `password = x`, `PASSWORD: 'x'`, `--password=x`, `token=x`, `api_key: x`: a
#: literal, not a variable or placeholder ($X, %{x}, {{ x }}, <x>, (x), *…)
#: nor code (`token = None`, `token = self._fetch_token()`).
PASSWORD_ASSIGN = re.compile(
    rb"""(?i)(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|access[_-]?key|"""
    rb"""private[_-]?key|client[_-]?secret)["']?\s*[:=]\s*["']?(?![$%{<(:*\s"'`])"""
    rb"""(?!(?:None|null|nil|true|false|self\.)(?![\w])|[A-Za-z_][\w.]*\()"""
    rb"""([^\s"'`,;)&]{4,})"""
)
#: scheme://user:secret@host with a literal secret.
URL_CREDENTIALS = re.compile(rb"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?![$%{<(])[^\s/@'\"$%{}]+@")

#: (pattern, what it finds), checked in this order.
KINDS: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (PRIVATE_KEY, "a private key"),
    (AWS_KEY, "an AWS access key id"),
    (URL_CREDENTIALS, "a URL with a password in it (user:password@)"),
    (PASSWORD_ASSIGN, "a literal password, token or key (name=value)"),
)


def secret_kinds(content: bytes) -> list[str]:
    """What kinds of literal secret `content` holds (empty when none)."""
    return [what for pattern, what in KINDS if pattern.search(content)]


def secret_kind(text: str) -> str | None:
    """The first kind of literal secret in `text`, or None."""
    kinds = secret_kinds(text.encode("utf-8", "surrogateescape"))
    return kinds[0] if kinds else None
