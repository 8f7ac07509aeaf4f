"""The one allow-list of extra ssh options a manifest may give.

`cutover.files.ssh_options` and `cutover.old_web_ssh_options` are passed to
ssh (directly, or through rsync's `-e`). ssh can run local commands
(ProxyCommand, LocalCommand, KnownHostsCommand, Match exec), read another
config file (-F) or open forwardings, so only options that say how to reach
and trust the host are accepted: checked at load and again at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: `-o Key=Value` keys (matched case-insensitively, as ssh does).
ALLOWED_KEYS: frozenset[str] = frozenset(k.lower() for k in (
    "AddressFamily", "BatchMode", "CertificateFile", "CheckHostIP", "Ciphers", "Compression",
    "ConnectionAttempts", "ConnectTimeout", "GlobalKnownHostsFile", "HashKnownHosts",
    "HostKeyAlgorithms", "HostKeyAlias", "HostName", "IdentitiesOnly", "IdentityFile",
    "IPQoS", "KbdInteractiveAuthentication", "KexAlgorithms", "LogLevel", "MACs",
    "NumberOfPasswordPrompts", "PasswordAuthentication", "Port", "PreferredAuthentications",
    "PubkeyAcceptedAlgorithms", "PubkeyAuthentication", "RekeyLimit", "ServerAliveCountMax",
    "ServerAliveInterval", "StrictHostKeyChecking", "TCPKeepAlive", "UpdateHostKeys",
    "User", "UserKnownHostsFile", "VerifyHostKeyDNS",
))

#: Flags that take a value: -p PORT, -i IDENTITY, -l USER.
VALUE_FLAGS = frozenset({"-p", "-i", "-l"})
#: Flags without a value.
PLAIN_FLAGS = frozenset({"-4", "-6", "-C", "-q", "-T", "-v"})

VALUE = re.compile(r"[A-Za-z0-9_.,:/@+%~-]+", re.ASCII)
KEY_VALUE = re.compile(r"([A-Za-z]+)=(.*)", re.ASCII | re.DOTALL)
PORT = re.compile(r"[0-9]{1,5}", re.ASCII)

HINT = ("allowed: -p PORT, -i FILE, -l USER, -4, -6, -C, -q, -T, -v, and -o Key=Value "
        "for connection and host-key settings (ProxyCommand, LocalCommand, -F ... are not)")


def _value_problem(flag: str, value: str) -> str | None:
    if not VALUE.fullmatch(value):
        return f"the value of {flag} may hold only ASCII letters, digits and _.,:/@+%~-"
    if flag == "-p" and not (PORT.fullmatch(value) and 1 <= int(value) <= 65535):
        return "-p needs a TCP port (1..65535)"
    return None


def _option_problem(option: str) -> str | None:
    match = KEY_VALUE.fullmatch(option)
    if match is None:
        return "-o takes Key=Value (no spaces)"
    key, value = match.groups()
    if key.lower() not in ALLOWED_KEYS:
        return f"ssh option {key} is not allowed (it can run commands or change what ssh trusts)"
    return _value_problem(f"-o {key}", value)


def ssh_options_problem(options: Sequence[str]) -> str | None:
    """None when every option is on the allow-list; else the first problem."""
    i = 0
    while i < len(options):
        token = options[i]
        flag, rest = token[:2], token[2:]
        if flag == "-o" or flag in VALUE_FLAGS:
            if not rest:
                if i + 1 >= len(options):
                    return f"{flag} needs a value"
                i += 1
                rest = options[i]
            problem = _option_problem(rest) if flag == "-o" else _value_problem(flag, rest)
        elif token in PLAIN_FLAGS:
            problem = None
        else:
            problem = f"ssh option {token[:40]!r} is not allowed"
        if problem:
            return f"{problem}; {HINT}"
        i += 1
    return None
