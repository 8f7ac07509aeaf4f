"""Jinja2 templates from cloudinit/templates/, with StrictUndefined."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

import builder
from builder.cache_dir import code_identity, default_cache_dir
from builder.errors import UserError
from builder.render import quoting


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept in amibake's cache between runs (Jinja checks each
    template's source checksum). The directory is named for what else the code
    depends on, this module (the environment's settings) and Jinja's version,
    so a change to either never reads old code. None when it cannot be made."""
    key = code_identity(f"templates {jinja2.__version__}", [Path(__file__)])
    if key is None:
        return None
    directory = default_cache_dir() / "templates" / key
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(directory))


@functools.lru_cache(maxsize=4)
def _environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        bytecode_cache=_bytecode_cache(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # HTML pages (the maintenance page) are escaped; configs are quoted by filters
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                            default_for_string=False, default=False),
    )
    # One filter per target format (builder/render/quoting.py): a template says
    # where each value lands, `{{ path | sh }}`, `{{ page | nginx }}`.
    env.filters.update({
        "sh": quoting.sh,
        "systemd": quoting.systemd_word,
        "systemd_value": quoting.systemd_value,
        "systemd_path": quoting.systemd_path,
        "systemd_path_word": quoting.systemd_path_word,
        "unix_name": quoting.unix_name,
        "passwd_field": quoting.passwd_field,
        "nginx": quoting.nginx,
        "nginx_path": quoting.nginx_path,
        "pg_literal": quoting.pg_literal,
        "pg_name": quoting.pg_conf_name,
        "yaml": quoting.yaml_flow,
        "comment": quoting.comment,
        "integer": quoting.integer,
    })
    return env


def render_template(name: str, **context: Any) -> bytes:
    """Render cloudinit/templates/<name>; an undefined variable is an error.

    `*.html.j2` templates are HTML-escaped; every other value is quoted by the
    template's own filters for the format it lands in."""
    env = _environment(builder.TEMPLATES_DIR / "templates")
    try:
        text = env.get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        raise UserError(
            f"template {name}: {exc.message}",
            hint="a template uses a value the renderer does not pass; fix the template",
        ) from exc
    except jinja2.TemplateNotFound as exc:
        raise UserError(f"template not found: {exc.name}", hint="is cloudinit/ complete?") from exc
    return text.encode()


def read_static(relpath: str) -> bytes:
    """A file under cloudinit/ copied verbatim (sample app, boot scripts)."""
    return (builder.TEMPLATES_DIR / relpath).read_bytes()


#: cloudinit/app/: the sample Rack app, copied verbatim.
TEMPLATES_SUBDIR_APP = "app"
