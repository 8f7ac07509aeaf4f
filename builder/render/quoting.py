"""Quoting for every format amibake renders: each value is written for the file it lands in.

The manifest's values are checked at load for the grammar of their destination;
the renderers quote them again on output, so that a check missed is not a hole.
A value a format cannot carry safely (a newline in a systemd setting, a `$` in
an nginx argument) raises `Unquotable`; the renderer turns it into a one-line
UserError that points at the manifest. Nothing here returns half-quoted text.

Each function names its format and follows that format's own documentation:
systemd.syntax(7) and systemd.service(5), nginx's configuration parser
(ngx_conf_read_token), postgresql.conf and pg_hba.conf lexing, psql's
backslash-command arguments, POSIX shell words, YAML 1.1 (PyYAML, as
cloud-init reads it).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

import yaml

_REPR_MAX = 60


class Unquotable(ValueError):
    """A value the target format cannot carry safely; the message is one line."""


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 4] + "...'"


def _one_line(value: object, target: str, *, tab: bool = False) -> str:
    """`value` as text, refused when it holds a control or line-break character."""
    text = str(value)
    for ch in text:
        if ch == "\t" and tab:
            continue
        if not ch.isprintable() and ch != " ":
            raise Unquotable(f"{target} cannot hold {_show(text)}: it has the control "
                             f"character U+{ord(ch):04X}")
    return text


def comment(value: object) -> str:
    """Text for a `#` comment line in any format: every character that could end
    the line (newline, CR, NEL, U+2028/9) or hide text (other controls) becomes '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def file_name(value: object) -> str:
    """A file's name fit for comments and logs: its last path component, with
    anything outside [A-Za-z0-9._-] replaced by '_'."""
    base = str(value).replace("\\", "/").rstrip("/").rpartition("/")[2]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base) or "_"


def integer(value: object) -> str:
    """A number written bare (a port, a count): only a real int (not a bool) passes."""
    if type(value) is not int:
        raise Unquotable(f"{_show(str(value))} is not a whole number")
    return str(value)


# ------------------------------------------------------------------ systemd

_SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class Raw(str):
    """A piece of systemd syntax written as is (a specifier such as `%i`)."""


def _systemd_inner(text: str) -> str:
    return (text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
            .replace("$", "$$"))


def systemd_word(*pieces: str, expand_env: bool = False) -> str:
    """One word of a systemd setting that splits on whitespace and unquotes
    (ExecStart= arguments, Environment= assignments, RequiresMountsFor=,
    sysusers.d and tmpfiles.d fields). `%` becomes `%%` (specifiers); with
    `expand_env` (ExecStart=), `$` becomes `$$`. Double-quoted, `\\` and `"`
    escaped, when it holds anything outside [A-Za-z0-9_@+=:,./-]. `Raw` pieces
    (`%i`) are written as they are."""
    literal = "".join(p for p in pieces if not isinstance(p, Raw))
    _one_line(literal, "a systemd setting")
    out = []
    for piece in pieces:
        if isinstance(piece, Raw):
            out.append(str(piece))
        else:
            inner = _systemd_inner(piece)
            out.append(inner if expand_env else inner.replace("$$", "$"))
    word = "".join(out)
    if word and _SYSTEMD_SAFE.fullmatch(literal or "x"):
        return word
    return f'"{word}"'


def systemd_exec(argv: Sequence[str | tuple[str, ...]]) -> str:
    """An ExecStart= command line. The executable must be an absolute path (a
    leading `-@:+!` would change how systemd runs it); each argument is one
    `systemd_word` with `$` doubled; a tuple is one argument made of pieces
    (literal text and `Raw` specifiers)."""
    if not argv or not isinstance(argv[0], str) or not argv[0].startswith("/"):
        raise Unquotable(f"an ExecStart= executable must be an absolute path, not "
                         f"{_show(str(argv[0]) if argv else '')}")
    return " ".join(
        systemd_word(*(w if isinstance(w, tuple) else (w,)), expand_env=True) for w in argv)


def systemd_env(name: str, *value: str) -> str:
    """One Environment= assignment NAME=value as one word (systemd does not
    expand `$` in Environment=, so only `%` is doubled); `value` may hold `Raw`
    specifiers."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise Unquotable(f"{_show(name)} is not an environment variable name")
    return systemd_word(f"{name}=", *value)


def _whole_line(value: object) -> str:
    text = _one_line(value, "a systemd setting")
    if text != text.strip() or text.endswith("\\"):
        raise Unquotable(f"a systemd setting cannot hold {_show(text)}: leading or trailing "
                         "blanks or a trailing backslash")
    return text


def systemd_value(value: object) -> str:
    """A whole-line systemd value that is not split into words (Description=,
    User=, WorkingDirectory=): specifiers doubled, no leading or trailing
    whitespace (systemd strips it), no line breaks, no trailing backslash (a
    line continuation)."""
    return _whole_line(value).replace("%", "%%")


def passwd_field(value: object) -> str:
    """A field of /etc/passwd (sysusers.d GECOS, home): no `:`, one line."""
    text = _one_line(value, "an /etc/passwd field")
    if ":" in text:
        raise Unquotable(f"an /etc/passwd field cannot hold {_show(text)}: it has a `:`")
    return text


def valid_path(text: str) -> str:
    """Absolute, and what systemd calls a valid path: no component over 255
    bytes, under 4096 bytes in all."""
    if not text.startswith("/"):
        raise Unquotable(f"{_show(text)} is not an absolute path")
    if len(text.encode()) >= 4096 or any(len(p.encode()) > 255 for p in text.split("/")):
        raise Unquotable(f"{_show(text)} is not a valid path (a name over 255 bytes, or "
                         "4096 bytes in all)")
    return text


def systemd_path(value: object) -> str:
    """WorkingDirectory=-style path (the rest of the line): absolute (a leading
    `-` or `~` means something else), valid, specifiers doubled."""
    return valid_path(_whole_line(value)).replace("%", "%%")


def systemd_path_word(value: object) -> str:
    """A path as one word of a splitting systemd setting (RequiresMountsFor=,
    sysusers.d home, tmpfiles.d path): absolute and valid, then `systemd_word`."""
    return systemd_word(valid_path(_one_line(value, "a systemd setting")))


def unix_name(value: object) -> str:
    """A user or group name for User=, sysusers.d, tmpfiles.d: the portable
    POSIX form systemd accepts everywhere."""
    text = str(value)
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,30}", text):
        raise Unquotable(f"{_show(text)} is not a user name ([a-z_][a-z0-9_-]*, at most "
                         "31 characters)")
    return text


# -------------------------------------------------------------------- nginx

_NGINX_SAFE = re.compile(r"[A-Za-z0-9_./:@~+,=-]+")


def nginx(value: object) -> str:
    """One nginx directive argument. Double-quoted with `\\` and `"` escaped
    when it holds anything outside [A-Za-z0-9_./:@~+,=-]. nginx has no escape
    for `$` (variables are expanded in most arguments): refused, as are control
    characters."""
    text = _one_line(value, "an nginx directive argument")
    if "$" in text:
        raise Unquotable(f"an nginx argument cannot hold {_show(text)}: nginx expands "
                         "`$` and has no escape for it")
    if text and _NGINX_SAFE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_path(value: object) -> str:
    """A file system path as one nginx argument: absolute and valid, then `nginx`."""
    return nginx(valid_path(_one_line(value, "an nginx directive argument")))


# --------------------------------------------------------------- PostgreSQL

_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_NOT_SETTINGS = {"include", "include_dir", "include_if_exists"}


def pg_conf_name(value: object) -> str:
    """A postgresql.conf parameter name (`name` or `extension.name`), never an
    include directive."""
    text = str(value)
    if not _GUC_NAME.fullmatch(text) or text.lower() in _NOT_SETTINGS:
        raise Unquotable(f"{_show(text)} is not a PostgreSQL setting name")
    return text


def pg_literal(value: object) -> str:
    """A single-quoted string for postgresql.conf or a psql backslash command:
    `'` doubled, `\\` doubled (both read backslash escapes). Line breaks and
    other control characters are refused: they would end the line."""
    text = _one_line(value, "a PostgreSQL string", tab=True)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


_HBA_KEYWORDS = {"all", "sameuser", "samerole", "samegroup", "replication", "samehost",
                 "samenet"}
_HBA_SAFE = re.compile(r"[A-Za-z0-9_.:/-]+")


def hba_token(value: object, *, keyword: bool = False) -> str:
    """One pg_hba.conf field. `keyword`: the value may be one of pg_hba's
    keywords (all, sameuser, replication ...) and is then written bare; otherwise
    a keyword-looking name is double-quoted so it names a database or role.
    Quoted when it holds anything outside [A-Za-z0-9_.:/-] or would start with
    `+` (group) or `@` (file); `"` is doubled."""
    text = _one_line(value, "a pg_hba.conf field")
    if not text:
        raise Unquotable("a pg_hba.conf field cannot be empty")
    if keyword and text in _HBA_KEYWORDS:
        return text
    if _HBA_SAFE.fullmatch(text) and text not in _HBA_KEYWORDS:
        return text
    return '"' + text.replace('"', '""') + '"'


# -------------------------------------------------------------------- shell


def sh(value: object) -> str:
    """One POSIX shell word (shlex.quote); line breaks are kept inside quotes,
    a NUL (which no script can hold) is refused."""
    text = str(value)
    if "\0" in text:
        raise Unquotable(f"a shell word cannot hold {_show(text)}: it has a NUL")
    return shlex.quote(text)


# --------------------------------------------------------------------- YAML


def yaml_flow(value: object) -> str:
    """A YAML value (scalar, list, mapping) on one line in flow style, as PyYAML's
    SafeLoader (cloud-init's) reads it back; fit for block and flow context."""
    def dump(style: str | None) -> str:
        dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=False,
                                width=1 << 30, default_style=style)  # type: ignore[arg-type]
        return dumped.removesuffix("\n...\n").rstrip("\n")

    text = dump(None)
    if "\n" in text:  # line breaks inside a string: double quotes and escapes
        text = dump('"')
    if "\n" in text:
        raise Unquotable(f"{_show(str(value))} does not fit one YAML line")
    return text
