"""Small helpers shared by the component renderers."""

from __future__ import annotations

import re

from builder.errors import Problem, UserError
from builder.manifest.model import Manifest
from builder.render.quoting import file_name

SETUP_DIR = "/usr/lib/amibake/setup"
LIB_DIR = "/usr/lib/amibake"
UNIT_DIR = "/etc/systemd/system"
ETC_DIR = "/etc/amibake"
HOSTS_ENV = "/etc/amibake/hosts.env"
SECRET_TOOL = "/usr/lib/amibake/amibake-secret"
DISPATCHER = "/usr/lib/amibake/amibake-dispatch"


def hosts_var(role: str) -> str:
    """Suffix of the hosts.env variable naming a role's addresses: AMIBAKE_HOSTS_<X>."""
    return re.sub(r"[^A-Z0-9]", "_", role.upper())


def manifest_error(manifest: Manifest, path: str, message: str, hint: str = "") -> UserError:
    """A UserError pointing at the manifest line of `path`."""
    problem = Problem(manifest.where(path), message)
    return UserError(f"{problem}", hint=hint, problems=(problem,))


def source_name(manifest: Manifest) -> str:
    """The manifest's file name as rendered comments show it: its base name with
    anything outside [A-Za-z0-9._-] replaced (a file name is not trusted)."""
    return file_name(manifest.source.name)
