"""The one path grammar (builder/manifest/paths.py) and ssh option allow-list."""

from __future__ import annotations

import pytest

from builder.manifest.paths import remote_path_reason, unsafe_path_reason
from builder.manifest.ssh_options import ssh_options_problem


@pytest.mark.parametrize("path", [
    "/srv/app", "/srv/app/public", "/var/uploads", "/var/www/maintenance/on", "/opt/ree",
    "/usr/local/ruby", "/mnt/postgresql/15/main", "/var/lib/app", "/home/app", "/tmp/x",
])
def test_ordinary_paths_are_fine(path: str) -> None:
    assert unsafe_path_reason(path) is None


@pytest.mark.parametrize(("path", "words"), [
    ("", "empty"),
    ("srv/app", "absolute"),
    ("/", "system directory"),
    ("/etc", "system directory"),
    ("/etc/nginx", "inside /etc"),
    ("/usr", "system directory"),
    ("/usr/bin/sudo", "inside /usr/bin"),
    ("/var", "system directory"),
    ("/var/lib", "system directory"),
    ("/var/run/x", "inside /var/run"),
    ("/lib64", "system directory"),
    ("/srv", "system directory"),
    ("/etc/../usr/bin/sudo", "'..'"),
    ("/mnt/../etc/x", "'..'"),
    ("/srv//app", "'//'"),
    ("/srv/app/.", "'.'"),
    ("/srv/app/", "end with '/'"),
    ("/srv/app;rm -rf /", "ASCII"),
    ("/srv/a\npp", "ASCII"),
    ("/srv/a\x00pp", "ASCII"),
    ("/srv/\u0661", "ASCII"),
    ("/srv/$(id)", "ASCII"),
    ("/" + "a" * 5000, "too long"),
])
def test_unsafe_paths_are_refused_with_the_reason(path: str, words: str) -> None:
    reason = unsafe_path_reason(path)
    assert reason is not None and words in reason


@pytest.mark.parametrize(("location", "ok"), [
    ("/var/uploads/", True), ("deploy@192.0.2.10:/var/uploads/", True),
    ("old-host:/var/uploads", True), ("", False), ("/", False), ("host:/", False),
    ("host:", False), ("host:relative", False), ("-e sh:/x", False), ("a b@host:/x", False),
    ("host:/etc/", False),
])
def test_rsync_locations(location: str, ok: bool) -> None:
    assert (remote_path_reason(location) is None) is ok


@pytest.mark.parametrize("options", [
    (), ("-o", "StrictHostKeyChecking=yes"), ("-oBatchMode=yes",),
    ("-p", "2222", "-i", "/root/.ssh/id_ed25519", "-o", "IdentitiesOnly=yes",
     "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
     "-o", "LogLevel=ERROR"),
])
def test_allowed_ssh_options(options: tuple[str, ...]) -> None:
    assert ssh_options_problem(options) is None


@pytest.mark.parametrize("options", [
    ("-o", "ProxyCommand=sh -c id"), ("-oProxyCommand=id",), ("-o", "proxycommand=id"),
    ("-o", "LocalCommand=id"), ("-o", "PermitLocalCommand=yes"),
    ("-o", "KnownHostsCommand=/bin/id"), ("-o", "Match exec id"), ("-F", "/tmp/cfg"),
    ("-F/tmp/cfg",), ("-J", "jump"), ("-o", "ProxyJump=jump"), ("-L", "1:a:2"), ("-o",),
    ("-p", "x"), ("-p", "70000"), ("-o", "StrictHostKeyChecking=yes\nProxyCommand=id"),
    ("-o", "User=$(id)"), ("-i", "/x y"),
])
def test_refused_ssh_options(options: tuple[str, ...]) -> None:
    assert ssh_options_problem(options) is not None
