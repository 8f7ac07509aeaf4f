"""A role's user-data and an image's content, from the component renderers.

One implementation for both paths: the files a baked image carries are the
files fried user-data writes; baked user-data only names the role and carries
per-instance bits.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from builder.app.rails_build import APP_BUILD
from builder.db_storage.volume import ebs_roles
from builder.errors import UserError
from builder.manifest.model import Manifest, Role
from builder.render import (
    app,
    appserver,
    assemble,
    base,
    cutover_login,
    ebs_storage,
    nginx,
    postgresql,
    ruby,
)
from builder.render.common import DISPATCHER, HOSTS_ENV, hosts_var, manifest_error
from builder.render.fragment import File, Fragment, ImageContent, Part, RenderedRole
from builder.render.quoting import Unquotable, comment, file_name

T = TypeVar("T")

Renderer = Callable[[Manifest, Role], Fragment]

#: Component → renderer, in the order their boot setup runs: Ruby, the app's
#: user and env, the app servers, nginx, then the database (its EBS volume first,
#: with `storage: ebs`). The dispatcher
#: queues each component's services as soon as its setup is done, so the app
#: servers boot while the database's setup (mkfs, initdb) runs; none of the
#: earlier setups needs the database (the app connects per request).
RENDERERS: dict[str, Renderer] = {
    "ruby": ruby.render,
    "app": app.render,
    "appserver": appserver.render,
    "nginx": nginx.render,
    "ebs-storage": ebs_storage.render,
    "postgresql": postgresql.render,
}
#: `app` is not named in roles: it comes with nginx (static pages) or app servers;
#: `ebs-storage` with postgresql when its data is on an EBS volume (`storage: ebs`).
IMPLIED_BY = {"app": ("nginx", "appserver"), "ebs-storage": ("postgresql",)}
#: Where a component's values live in the manifest (for errors).
SECTIONS = {"app": "app", "base": "components", "ebs-storage": "components.postgresql"}
LOCALE = "C.UTF-8"
_MARKER_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def role_fragments(manifest: Manifest, role_name: str) -> tuple[Fragment, ...]:
    """The fragments of every component the role switches on, in setup order."""
    role = _role(manifest, role_name)
    for index, component in enumerate(role.components):
        if component not in RENDERERS or component in IMPLIED_BY:
            raise manifest_error(
                manifest, f"roles.{role_name}.components.{index}",
                f"unknown component {component!r} in role {role_name}",
                hint="components: " + ", ".join(c for c in RENDERERS if c not in IMPLIED_BY),
            )
    active = set(role.components)
    for implied, by in IMPLIED_BY.items():
        if active.intersection(by):
            active.add(implied)
    if role_name not in ebs_roles(manifest):
        active.discard("ebs-storage")
    frags = [guarded(manifest, name, render, manifest, role)
             for name, render in RENDERERS.items() if name in active]
    # the db role's hook for the cutover's login (manifest cutover.receive)
    login = guarded(manifest, "postgresql", cutover_login.render, manifest, role)
    return tuple(frags + ([login] if login is not None else []))


def guarded(manifest: Manifest, component: str, render: Callable[..., T], *args: Any,
            **kwargs: Any) -> T:
    """`render(*args)`; a value its output format cannot carry (Unquotable)
    becomes a UserError pointing at the component's section of the manifest."""
    try:
        return render(*args, **kwargs)
    except Unquotable as exc:
        section = SECTIONS.get(component, f"components.{component}")
        raise manifest_error(
            manifest, section, f"{component}: {exc}",
            hint="amibake refuses to write a value its target file cannot hold as is",
        ) from None


def all_role_fragments(
    manifest: Manifest, roles: Sequence[str] | None = None
) -> dict[str, tuple[Fragment, ...]]:
    names = tuple(manifest.roles) if roles is None else tuple(roles)
    return {name: role_fragments(manifest, name) for name in names}


def image_content(manifest: Manifest) -> ImageContent:
    """Every file and package a baked image carries for all its roles."""
    fragments = all_role_fragments(manifest, manifest.baked_roles)
    base_fragment = guarded(manifest, "base", base.render, manifest, fragments, image=True)
    everything = [base_fragment] + [f for frs in fragments.values() for f in frs]
    packages = set(manifest.image.packages)
    for fragment in everything:
        packages.update(fragment.packages)
    return ImageContent(packages=tuple(sorted(packages)), files=_merge_files(everything))


def render_role(
    manifest: Manifest,
    role_name: str,
    *,
    baked: bool = False,
    hosts: Mapping[str, Sequence[str]] | None = None,
    markers: Mapping[str, str] | None = None,
    extra_parts: Sequence[Part] = (),
    app_archive: bytes | None = None,
) -> RenderedRole:
    """The user-data that starts an instance in `role_name`.

    Fried (default): packages, every file (write_files, deferred until the
    packages are installed) and a runcmd of the dispatcher: works from a plain
    Debian cloud image; refused for the team's own app (`app.code` a path, git
    or tarball), whose code is only in an image, unless the caller brings the
    app as `app_archive` (a tar.gz of its tree: written by cloud-init, unpacked
    at app.root and built at boot by the same app-build the bake runs; small
    apps only, user-data is capped at 16 KiB; bench/boot.py's fried contender).
    Baked: only the role marker and per-instance bits.
    `hosts` (role → addresses) becomes /etc/amibake/hosts.env, which the setup
    scripts read to find other roles (nginx's app servers, the database);
    `markers` adds `# amibake-<key>: <value>` lines (e.g. secrets-endpoint);
    `extra_parts` are appended as MIME parts.
    """
    fragments = role_fragments(manifest, role_name)
    if not _ROLE_NAME.match(role_name):  # the dispatcher reads it back with this grammar
        raise manifest_error(manifest, f"roles.{role_name}",
                             f"role name {role_name!r} cannot be written to user-data",
                             hint="role names are [A-Za-z0-9][A-Za-z0-9._-]*")
    if not baked and app.own_app(manifest) and app_archive is None:
        kind = manifest.app.code.kind  # type: ignore[union-attr]
        raise manifest_error(
            manifest, "app.code",
            f"fried user-data cannot carry the team's own app (app.code: {kind}): its code, "
            "gems and assets reach an instance only inside a baked image",
            hint="bake an image (`amibake bake`, `make image`) and render --baked; "
                 "`code: sample` (the Rack sample) still renders fried")
    comments = [f"amibake-role: {role_name}"]
    for key, value in sorted((markers or {}).items()):
        if not _MARKER_KEY.match(key) or comment(value) != value or key == "role":
            raise UserError(f"bad user-data marker {key!r}: {value!r}",
                            hint="keys are [a-z0-9-], values one line")
        comments.append(f"amibake-{key}: {value}")
    comments.append(comment(
        f"{manifest.name} {manifest.version}, {'baked image' if baked else 'fried'}; "
        f"rendered by amibake from {file_name(manifest.source.name)}"
    ))
    config: dict[str, object] = {"locale": LOCALE}
    write_files: list[dict[str, object]] = []
    if hosts:
        write_files.append(_write_file(File(HOSTS_ENV, hosts_env(hosts)), defer=False))
    if not baked:
        base_fragment = guarded(manifest, "base", base.render, manifest,
                                {role_name: fragments}, image=False)
        packages = sorted({p for f in (base_fragment, *fragments) for p in f.packages}
                          | set(manifest.image.packages))
        config["packages"] = packages
        # what the image's cloud-init settings say (builder.render.base)
        config["ssh_genkeytypes"] = base.host_key_types(manifest)
        write_files += [
            _write_file(f, defer=True) for f in _merge_files([base_fragment, *fragments])
        ]
        runcmd: list[list[str]] = [["systemctl", "daemon-reload"], [DISPATCHER]]
        if app_archive is not None and app.own_app(manifest):
            write_files.append(_write_file(File(APP_ARCHIVE, app_archive, mode=0o600),
                                           defer=True))
            runcmd.insert(0, ["sh", "-c", fried_app_build(manifest)])
        config["runcmd"] = runcmd
    if write_files:
        config["write_files"] = write_files
    parts = (
        Part(assemble.CLOUD_CONFIG, "cloud-config.yaml", assemble.cloud_config(config, comments)),
        *extra_parts,
    )
    raw = assemble.assemble(parts)
    return RenderedRole(
        manifest_name=manifest.name,
        role=role_name,
        baked=baked,
        parts=parts,
        raw=raw,
        user_data=assemble.compress(raw),
        fragments=fragments,
    )


#: Where fried user-data puts the team's app before unpacking it (render_role's app_archive).
APP_ARCHIVE = "/var/lib/amibake/app.tar.gz"


def fried_app_build(manifest: Manifest) -> str:
    """Shell for a fried boot: unpack APP_ARCHIVE at app.root and build the app there
    as the bake does (cloudinit/rails/app-build: bundle --local, assets:precompile,
    database.yml)."""
    root = shlex.quote(manifest.app.root)
    appserver = manifest.components.appserver
    env = shlex.quote(appserver.environment if appserver is not None else "production")
    return (f"set -e; install -d -m 0755 {root}; tar -xzf {APP_ARCHIVE} -C {root}"
            f" --no-same-owner; rm -f {APP_ARCHIVE}; cd {root};"
            f" RAILS_ENV={env} RACK_ENV={env} {APP_BUILD} {root}")


def hosts_env(hosts: Mapping[str, Sequence[str]]) -> bytes:
    lines = ["# Addresses of other roles, for amibake's setup scripts (written by user-data)."]
    for role, addresses in sorted(hosts.items()):
        for address in addresses:
            if not re.fullmatch(r"[0-9A-Za-z.:\-]+", address):
                raise UserError(f"bad address for role {role}: {address!r}",
                                hint="give IP addresses or host names")
        lines.append(f'AMIBAKE_HOSTS_{hosts_var(role)}="{" ".join(addresses)}"')
    return ("\n".join(lines) + "\n").encode()


def _role(manifest: Manifest, role_name: str) -> Role:
    try:
        return manifest.roles[role_name]
    except KeyError:
        raise UserError(
            f"{manifest.source}: no role {role_name!r}",
            hint="roles: " + ", ".join(manifest.roles),
        ) from None


def _merge_files(fragments: Sequence[Fragment]) -> tuple[File, ...]:
    """Files of several fragments by path; the same path twice must be the same file."""
    by_path: dict[str, tuple[File, str]] = {}
    for fragment in fragments:
        for file in fragment.files:
            seen = by_path.get(file.path)
            if seen is None:
                by_path[file.path] = (file, fragment.component)
            elif seen[0] != file:
                raise UserError(
                    f"{file.path} is rendered differently by {seen[1]} and {fragment.component}",
                    hint="a file must not depend on the role; this is a renderer bug",
                )
    return tuple(by_path[p][0] for p in sorted(by_path))


def _write_file(file: File, *, defer: bool) -> dict[str, object]:
    entry: dict[str, object] = {"path": file.path}
    # cloud-init's defaults (root:root, 0644) are left out: user-data is tight.
    if file.owner != "root:root":
        entry["owner"] = file.owner
    if file.mode != 0o644:
        entry["permissions"] = f"0{file.mode:o}"
    try:
        text = file.content.decode("utf-8")
        # A block literal keeps plain lines only: tabs, CR, NEL, U+2028/9 and
        # other controls go base64 so that cloud-init writes exactly these bytes.
        if not text.replace("\n", "").isprintable():
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "not plain text")
        entry["content"] = text
    except UnicodeDecodeError:
        import base64

        entry["content"] = base64.b64encode(file.content).decode()
        entry["encoding"] = "b64"
    if defer:
        entry["defer"] = True
    return entry
