"""builder/render/quoting.py: each target format's quoting, read back by that
format's rules (the real parsers read whole rendered files in
tests/test_render_hostile.py)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import yaml

from builder.render import quoting
from builder.render.quoting import Raw, Unquotable

HOSTILE = [
    "plain", "two words", "quote\"d", "single'q", "back\\slash", "$(id)", "`id`", "${HOME}",
    "50%", "semi;colon", "{brace}", "#hash", "ünïcødé", "x" * 5000, "", "-leading-dash", ";",
]
LINE_BREAKS = ["new\nline", "carriage\rreturn", "nul\0", "nel\x85", "ls\u2028", "esc\x1b["]


@pytest.mark.parametrize("value", HOSTILE + LINE_BREAKS)
def test_sh_round_trips_through_bash(value: str) -> None:
    if "\0" in value:  # no shell script can hold a NUL
        with pytest.raises(Unquotable):
            quoting.sh(value)
        return
    proc = subprocess.run(["bash", "-c", f"printf %s {quoting.sh(value)}"],
                          capture_output=True, check=True)
    assert proc.stdout.decode() == value


@pytest.mark.parametrize("value", HOSTILE)
def test_nginx_word_is_one_token_or_refused(value: str) -> None:
    if "$" in value:
        with pytest.raises(Unquotable, match="no escape"):
            quoting.nginx(value)
        return
    word = quoting.nginx(value)
    if word.startswith('"'):
        inner = word[1:-1]
        assert '"' not in inner.replace('\\"', "")
        assert inner.replace('\\"', '"').replace("\\\\", "\\") == value
    else:
        assert word == value and word


@pytest.mark.parametrize("value", LINE_BREAKS)
def test_every_line_format_refuses_line_breaks(value: str) -> None:
    for quote in (quoting.nginx, quoting.systemd_word, quoting.systemd_value,
                  quoting.pg_literal, quoting.hba_token):
        with pytest.raises(Unquotable, match="control character"):
            quote(value)


def test_comment_keeps_one_line() -> None:
    for value in LINE_BREAKS:
        out = quoting.comment(f"a {value} b")
        assert len(out.splitlines()) == 1 and out.isprintable()
    assert quoting.comment("smallpayroll — é") == "smallpayroll — é"


def test_file_name_is_a_safe_base_name() -> None:
    assert quoting.file_name("/x/smallpayroll.yaml") == "smallpayroll.yaml"
    assert quoting.file_name("/x/evil\nbootcmd: [id].yaml") == "evil_bootcmd___id_.yaml"
    assert quoting.file_name("") == "_"


def test_systemd_word_escapes_specifiers_quotes_and_dollars() -> None:
    assert quoting.systemd_word("production") == "production"
    assert quoting.systemd_word("tcp://0.0.0.0:", Raw("%i")) == "tcp://0.0.0.0:%i"
    assert quoting.systemd_word("a b") == '"a b"'
    assert quoting.systemd_word('5"0%$') == '"5\\"0%%$"'
    assert quoting.systemd_word("$x", expand_env=True) == '"$$x"'
    assert quoting.systemd_word("") == '""'
    assert quoting.systemd_word(";") == '";"'


def test_systemd_exec_needs_an_absolute_executable() -> None:
    assert quoting.systemd_exec(["/usr/bin/puma", "--bind", ("tcp://a:", Raw("%i"))]) == \
        "/usr/bin/puma --bind tcp://a:%i"
    for bad in ("puma", "-/usr/bin/puma", "+/bin/sh", ""):
        with pytest.raises(Unquotable):
            quoting.systemd_exec([bad])


@pytest.mark.parametrize("value", [" x", "x ", "x\\", "a\nb"])
def test_systemd_value_refuses_what_the_parser_would_change(value: str) -> None:
    with pytest.raises(Unquotable):
        quoting.systemd_value(value)


def test_systemd_path_and_unix_name() -> None:
    assert quoting.systemd_path("/srv/a%b c") == "/srv/a%%b c"
    for bad in ("srv", "-/srv", "~/x"):
        with pytest.raises(Unquotable):
            quoting.systemd_path(bad)
    assert quoting.unix_name("app") == "app"
    for bad in ("root:x", "a b", "App", "x" * 40, "0day", "ä"):
        with pytest.raises(Unquotable):
            quoting.unix_name(bad)


def test_pg_literal_and_names() -> None:
    assert quoting.pg_literal("it's a \\ test") == "'it''s a \\\\ test'"
    assert quoting.pg_literal("tab\there") == "'tab\there'"
    assert quoting.pg_conf_name("auto_explain.log_min_duration") == \
        "auto_explain.log_min_duration"
    for bad in ("include", "INCLUDE_DIR", "a b", "x=1", "a.b.c", "1x", "shared_buffers\n",
                "ñame"):
        with pytest.raises(Unquotable):
            quoting.pg_conf_name(bad)


def test_hba_tokens() -> None:
    assert quoting.hba_token("all", keyword=True) == "all"
    assert quoting.hba_token("all") == '"all"'  # a database named all
    assert quoting.hba_token("payroll_prod") == "payroll_prod"
    assert quoting.hba_token("+admins") == '"+admins"'
    assert quoting.hba_token("@/etc/shadow") == '"@/etc/shadow"'
    assert quoting.hba_token('a"b c,d#e') == '"a""b c,d#e"'
    with pytest.raises(Unquotable):
        quoting.hba_token("")


@pytest.mark.parametrize("value", HOSTILE + LINE_BREAKS + ["yes", "8000", "a: b", "[x]", "- x"])
def test_yaml_flow_reads_back_in_block_and_flow_context(value: str) -> None:
    one = quoting.yaml_flow(value)
    listed = quoting.yaml_flow([value])
    assert "\n" not in one + listed
    assert yaml.safe_load(f"k: {one}\n") == {"k": value}
    assert yaml.safe_load(f"k:\n  - {listed}  # c\n") == {"k": [[value]]}


def test_integer_accepts_only_ints() -> None:
    assert quoting.integer(8000) == "8000"
    for bad in ("8000", True, 1.5, "80; rm"):
        with pytest.raises(Unquotable):
            quoting.integer(bad)


def test_sh_is_shlex() -> None:
    assert shlex.split(quoting.sh("a b'c")) == ["a b'c"]


def test_paths_are_absolute_and_valid() -> None:
    assert quoting.nginx_path("/srv/a b") == '"/srv/a b"'
    assert quoting.systemd_path_word("/mnt/a b%") == '"/mnt/a b%%"'
    for bad in ("relative", "/" + "x" * 256, "/a" * 2100, "/a\nb"):
        for quote in (quoting.nginx_path, quoting.systemd_path_word, quoting.systemd_path):
            with pytest.raises(Unquotable):
                quote(bad)


def test_passwd_fields_have_no_colon() -> None:
    assert quoting.passwd_field("smallpayroll app") == "smallpayroll app"
    for bad in ("a:b", "a\nb"):
        with pytest.raises(Unquotable):
            quoting.passwd_field(bad)
