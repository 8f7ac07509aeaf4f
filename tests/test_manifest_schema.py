"""`amibake schema`: the settings reference is derived from model.py, completely."""

from __future__ import annotations

import dataclasses
import json

import pytest

from builder.cli import main
from builder.manifest import backup_model, model, stack_model
from builder.manifest.convert import yaml_fields
from builder.manifest.reference import sections

ALL = [c for module in (model, backup_model, stack_model) for c in vars(module).values()
       if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == module.__name__
       and c is not model.SecretRef]


def test_every_model_class_and_setting_is_documented() -> None:
    secs = {s.name: s for s in sections()}
    assert set(secs) == {c.__name__ for c in ALL}
    for cls in ALL:
        keys = [s.key for s in secs[cls.__name__].settings]
        assert keys == list(yaml_fields(cls)), cls.__name__
        for s in secs[cls.__name__].settings:
            assert s.help.strip(), f"{cls.__name__}.{s.key} has no help text"


def test_rows() -> None:
    secs = {s.name: s for s in sections()}
    nginx = {s.key: s for s in secs["Nginx"].settings}
    assert secs["Nginx"].paths == ("components.nginx",)
    assert (nginx["listen"].type, nginx["listen"].default) == ("integer", "80")
    assert nginx["balance"].type == "`round_robin` \\| `least_conn` \\| `ip_hash` \\| `fair`"
    assert nginx["upstream_role"].required and nginx["upstream_role"].default == "required"
    assert secs["Role"].paths == ("roles.<name>",)
    assert secs["HbaRule"].paths == ("components.postgresql.hba[]",)
    assert set(secs["DbEndpoint"].paths) == {"cutover.old_db", "cutover.new_db"}
    password = {s.key: s for s in secs["Database"].settings}["password"]
    assert password.type.startswith("secret reference")


def test_cli_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    text = capsys.readouterr().out
    assert "## Nginx (`components.nginx`)" in text
    assert "| `listen` | integer | `80` | HTTP port |" in text
    assert "| `version` | version (PEP 440) | **required** |" in text


def test_cli_json_is_the_same_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == model.SCHEMA_VERSION
    by_name = {s["name"]: s for s in doc["sections"]}
    assert by_name == {s.name: json.loads(json.dumps(dataclasses.asdict(s)))
                       for s in sections()}
    listen = next(s for s in by_name["Nginx"]["settings"] if s["key"] == "listen")
    assert listen == {"key": "listen", "type": "integer", "default": "80",
                      "required": False, "help": "HTTP port"}
