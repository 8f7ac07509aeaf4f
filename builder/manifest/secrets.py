"""What a literal secret looks like: the one set of patterns.

Used on every value of a manifest at load time and on rendered user-data by
the lints (builder/validate/lints.py). A finding names the kind of secret,
never the text: the caller says where it is and that it is not shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretPattern:
    """A regex asked only whether it occurs (`search`), the fast way: text without
    `needle` (a literal every match holds) is skipped, and a `folded` regex is
    written in lower case and run on the ASCII-lower-cased text, which is what
    `(?i)` means for bytes but runs ~30 times faster (validate scans every rendered
    file with these)."""

    regex: re.Pattern[bytes]
    needle: bytes = b""
    folded: bool = False

    def search(self, content: bytes) -> bool:
        if self.needle and self.needle not in content:
            return False
        return self.regex.search(content.lower() if self.folded else content) is not None


PRIVATE_KEY = SecretPattern(re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
                            needle=b"PRIVATE KEY-----")
#: the prefix first (a literal the regex engine can skip to), then the character
#: before it (`(?<![A-Z0-9])` five bytes back): no key inside a longer word
AWS_KEY = SecretPattern(re.compile(
    rb"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)(?<![A-Z0-9][\s\S]{4})"
    rb"[A-Z0-9]{16}(?![A-Z0-9])"
))
#: `password = x`, `PASSWORD: 'x'`, `--password=x`, `token=x`, `api_key: x`: a
#: literal, not a variable or placeholder ($X, %{x}, {{ x }}, <x>, (x), *…)
#: nor code (`token = None`, `token = self._fetch_token()`). Any case: folded.
PASSWORD_ASSIGN = SecretPattern(re.compile(
    rb"""(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|access[_-]?key|"""
    rb"""private[_-]?key|client[_-]?secret)["']?\s*[:=]\s*["']?(?![$%{<(:*\s"'`])"""
    rb"""(?!(?:none|null|nil|true|false|self\.)(?![\w])|[a-z_][\w.]*\()"""
    rb"""([^\s"'`,;)&]{4,})"""
), folded=True)
#: scheme://user:secret@host with a literal secret (the scheme's run is possessive:
#: it cannot hold the ':' that follows, so giving characters back never helps).
URL_CREDENTIALS = SecretPattern(re.compile(
    rb"[a-z][a-z0-9+.-]*+://[^\s/:@'\"]+:(?![$%{<(])[^\s/@'\"$%{}]+@"
), needle=b"://")

#: (pattern, what it finds), checked in this order.
KINDS: tuple[tuple[SecretPattern, str], ...] = (
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
