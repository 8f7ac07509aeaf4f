"""App servers: a systemd template unit, one instance per port (puma or mongrel).

For the team's own app, puma reads the app's own config/puma.rb (or
config/puma/<env>.rb) when it has one: amibake gives only the bind (its port)
and the environment; and the units Require amibake-migrate.service."""

from __future__ import annotations

from builder.manifest.model import AppServer, Manifest, Role, Ruby
from builder.render.app import (
    ENV_SETUP,
    MIGRATE_UNIT,
    app_environment,
    own_app,
    rails_files,
)
from builder.render.common import UNIT_DIR, manifest_error, source_name
from builder.render.fragment import File, Fragment
from builder.render.postgresql import local_db_unit
from builder.render.quoting import Raw, integer, systemd_env, systemd_exec
from builder.render.templates import render_template

UNIT = "amibake-app@.service"


def service_names(appserver: AppServer) -> tuple[str, ...]:
    return tuple(f"amibake-app@{port}.service" for port in appserver.ports)


def ruby_bin_dir(ruby: Ruby | None) -> str:
    if ruby is not None and ruby.source == "tarball" and ruby.tarball is not None:
        return ruby.tarball.prefix.rstrip("/") + "/bin"
    return "/usr/bin"


def render(manifest: Manifest, role: Role) -> Fragment:
    appserver = manifest.components.appserver
    if appserver is None:
        raise manifest_error(
            manifest, f"roles.{role.name}.components", "appserver is not configured"
        )
    app = manifest.app
    bin_dir = ruby_bin_dir(manifest.components.ruby)
    root = app.root.rstrip("/") or "/"
    port = Raw("%i")
    own = own_app(manifest)
    if appserver.kind == "puma":
        # Without --threads for the team's own app: its config/puma.rb decides
        # (RAILS_MAX_THREADS is set); the command line's bind wins over the file's.
        threads = [] if own else [
            "--threads", f"{integer(appserver.threads)}:{integer(appserver.threads)}"]
        argv: list[str | tuple[str, ...]] = [
            f"{bin_dir}/puma", "--environment", appserver.environment,
            "--bind", ("tcp://", appserver.bind, ":", port),
            *threads,
            f"{root}/config.ru",
        ]
    else:
        argv = [
            f"{bin_dir}/mongrel_rails", "start", "--environment", appserver.environment,
            "--address", appserver.bind, "--port", (port,), "--chdir", app.root,
            "--pid", ("/run/amibake-app-", port, "/mongrel.pid"),
            "--log", ("/var/log/amibake-app-", port, "/mongrel.log"),
        ]
    unit = render_template(
        "appserver/amibake-app@.service.j2",
        app_name=app.name,
        manifest_file=source_name(manifest),
        kind=appserver.kind,
        env_setup=ENV_SETUP,
        user=app.user,
        root=app.root,
        db_unit=local_db_unit(manifest),
        unit_lines=(f"Requires={MIGRATE_UNIT}", f"After={MIGRATE_UNIT}") if own else (),
        environment_lines=(
            " ".join([*(systemd_env(k, v) for k, v in app_environment(manifest)),
                      systemd_env("PORT", port)]),
            " ".join([systemd_env("UPLOADS_DIR", app.uploads_dir),
                      systemd_env("APP_NAME", app.name)]),
        ),
        exec_start=systemd_exec(argv),
    )
    # mongrel_cluster's own YAML is not written: systemd runs the cluster, one
    # amibake-app@<port> instance per mongrel, each with its pid and log
    # directories (RuntimeDirectory, LogsDirectory) made by systemd.
    files = [File(f"{UNIT_DIR}/{UNIT}", unit)]
    services = service_names(appserver)
    if own:
        files.extend(rails_files(manifest, services))
        services = (MIGRATE_UNIT, *services)
    return Fragment(
        component="appserver",
        files=tuple(files),
        services=services,
    )
