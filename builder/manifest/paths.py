"""The one grammar for file-system paths amibake writes to, chowns or syncs.

Used at load time (every path setting of the manifest) and again at run time
(the cutover's rsync destinations), so both ask the same questions:

- absolute and normalised: no `..` or `.` component, no `//`, no trailing `/`;
- ASCII letters, digits and `._-/+@` only (no spaces, quotes, `$`, control
  characters: the path lands in shell scripts, units and nginx config);
- never a system directory or a parent of one (`/`, `/etc`, `/var`, …), and
  never inside a tree the operating system owns (`/etc/…`, `/usr/bin/…`).

Each check returns None when the path is fine, else the reason in words.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

MAX_PATH = 1024
PATH_CHARS = re.compile(r"[A-Za-z0-9._/@+-]+", re.ASCII)

#: Directories that are never a setting's value, nor under one.
SYSTEM_TREES: tuple[str, ...] = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
    "/root", "/run", "/sbin", "/sys", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32",
    "/usr/lib64", "/usr/libexec", "/usr/libx32", "/usr/sbin", "/usr/share", "/usr/src",
    "/var/run", "/var/lib/apt", "/var/lib/dpkg", "/var/lib/systemd", "/var/cache/apt",
    "/var/spool", "/var/mail", "/var/backups", "/lost+found",
)

#: Directories that are never a setting's value (they or their parents are
#: shared by the system); a directory of its own under them is fine
#: (/srv/app, /opt/ree, /var/uploads, /usr/local/ruby, /tmp/x). /mnt is not
#: here: it is where the instance store is mounted (postgresql.mount_point).
SYSTEM_DIRS: frozenset[str] = frozenset({
    "/", "/home", "/media", "/opt", "/srv", "/tmp", "/usr", "/usr/local",
    "/usr/local/bin", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share",
    "/usr/local/etc", "/var", "/var/lib", "/var/log", "/var/cache", "/var/tmp", "/var/www",
    "/var/local", "/var/opt",
} | set(SYSTEM_TREES))


def path_grammar_reason(path: str) -> str | None:
    """Why `path` is not an absolute, normalised path of safe characters."""
    if not path:
        return "an empty path is not allowed (write an absolute path such as /srv/app)"
    if len(path) > MAX_PATH:
        return f"a path of {len(path)} characters is too long (at most {MAX_PATH})"
    if not path.startswith("/"):
        return "must be an absolute path (starting with /)"
    if not PATH_CHARS.fullmatch(path):
        return "paths may hold only ASCII letters, digits and ._-/+@"
    if "//" in path:
        return "must not contain '//' (write the path normalised)"
    if path != "/" and path.endswith("/"):
        return "must not end with '/' (write the path without it)"
    if any(part in (".", "..") for part in path.split("/")):
        return "must not contain '.' or '..' components (write the path normalised)"
    return None


def system_path_reason(path: str) -> str | None:
    """Why a normalised absolute `path` is a system directory, a parent of
    one, or inside a tree the system owns."""
    if path in SYSTEM_DIRS:
        return f"{path} is a system directory; use a directory of its own, such as /srv/app"
    pure = PurePosixPath(path)
    for tree in SYSTEM_TREES:
        if pure.is_relative_to(tree):
            return f"{path} is inside {tree}, which the system owns"
    return None


def unsafe_path_reason(path: str) -> str | None:
    """None when amibake may create, write, chown or sync `path`; else why not."""
    return path_grammar_reason(path) or system_path_reason(path)


def remote_path_reason(location: str) -> str | None:
    """An rsync location: `/abs/path` or `[user@]host:/abs/path`; one trailing
    `/` allowed (rsync reads it as "the directory's contents")."""
    host, sep, path = location.partition(":")
    if not sep:
        host, path = "", location
    elif not HOST_SPEC.fullmatch(host):
        return "the host part must be `host` or `user@host` (letters, digits, ._-)"
    if path != "/" and path.endswith("/"):
        path = path[:-1]
    return unsafe_path_reason(path)


HOST_SPEC = re.compile(r"([a-z_][a-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]{0,252})",
                       re.ASCII)


def under(path: str, parent: str) -> bool:
    """True when normalised `path` is strictly below normalised `parent`."""
    p, q = PurePosixPath(path), PurePosixPath(parent)
    return p != q and p.is_relative_to(q)
