"""The application: its unix user, directories and env file; the sample Rack app,
or for the team's own app (`app.code` a path, git or tarball) the Rails pieces:
database.yml (put over the app's own by builder.app.rails_build), the
app's secrets resolved into the env file at boot, and amibake-migrate with its
oneshot unit ordered before the app servers."""

from __future__ import annotations

from builder.app.rails_build import APP_BUILD, DATABASE_YML
from builder.manifest.model import Manifest, Role
from builder.render.common import (
    LIB_DIR,
    SECRET_TOOL,
    SETUP_DIR,
    UNIT_DIR,
    hosts_var,
    source_name,
)
from builder.render.fragment import File, Fragment
from builder.render.postgresql import local_db_unit
from builder.render.quoting import systemd_env
from builder.render.templates import TEMPLATES_SUBDIR_APP, read_static, render_template

SETUP = f"{SETUP_DIR}/app.sh"
ENV_SETUP = f"{SETUP_DIR}/app-env.sh"
SYSUSERS = "/usr/lib/sysusers.d/amibake-app.conf"
TMPFILES = "/usr/lib/tmpfiles.d/amibake-app.conf"
MIGRATE = f"{LIB_DIR}/amibake-migrate"
MIGRATE_UNIT = "amibake-migrate.service"

#: The sample app's files under cloudinit/app/, relative to app.root: its
#: static pages (nginx serves them), and the Rack code an app server runs.
SAMPLE_PAGES: tuple[str, ...] = ("public/404.html", "public/500.html")
SAMPLE_CODE: tuple[str, ...] = ("config.ru", "lib/payroll_app.rb")


def own_app(manifest: Manifest) -> bool:
    """The team's own app (a path, git or tarball), not the sample nor `none`."""
    return manifest.app.code not in ("sample", "none")


def secret_key(var: str) -> str:
    """The name an app secret has in roles.json "secrets" (amibake-secret NAME)."""
    return f"app:{var}"


def app_environment(manifest: Manifest) -> tuple[tuple[str, str], ...]:
    """Environment every process of the app gets (app servers and migrations)."""
    appserver = manifest.components.appserver
    env = appserver.environment if appserver is not None else "production"
    pairs: list[tuple[str, str]] = [("RACK_ENV", env), ("RAILS_ENV", env)]
    if own_app(manifest):
        pairs.append(("RAILS_LOG_TO_STDOUT", "1"))
        if appserver is not None:
            pairs.append(("RAILS_MAX_THREADS", str(appserver.threads)))
    return tuple(pairs)


def rails_files(manifest: Manifest, app_units: tuple[str, ...]) -> tuple[File, ...]:
    """database.yml, the migration wrapper and its unit (own apps with app servers)."""
    app = manifest.app
    db = app.database
    pg = manifest.components.postgresql
    appserver = manifest.components.appserver
    environment = appserver.environment if appserver is not None else "production"
    env_line = " ".join(systemd_env(k, v) for k, v in app_environment(manifest))
    return (
        # builder.app.rails_build puts it over the app's own config/database.yml.
        File(DATABASE_YML, render_template(
            "app/database.yml.j2", manifest_file=source_name(manifest),
            host_role=db.host_role, environment=environment, database=db.name,
            username=db.user, port=pg.port if pg is not None else 5432)),
        File(MIGRATE, read_static("rails/amibake-migrate"), mode=0o755),
        File(APP_BUILD, read_static("rails/app-build"), mode=0o755),
        File(f"{UNIT_DIR}/{MIGRATE_UNIT}", render_template(
            "app/amibake-migrate.service.j2", manifest_file=source_name(manifest),
            app_name=app.name, user=app.user, root=app.root, migrate=MIGRATE,
            db_unit=local_db_unit(manifest),
            app_units=app_units, environment_lines=(env_line,))),
    )


def render(manifest: Manifest, role: Role) -> Fragment:
    """Active for every role with nginx or app servers."""
    app = manifest.app
    db = app.database
    files = [
        File(SYSUSERS, render_template(
            "app/sysusers.conf.j2", app_name=app.name, user=app.user, root=app.root,
            gecos=f"{app.name} app")),
        File(TMPFILES, render_template(
            "app/tmpfiles.conf.j2", app_name=app.name, user=app.user,
            uploads_dir=app.uploads_dir,
            # the team's app writes tmp/ and log/ as its user (the image's code is root's)
            app_dirs=[f"{app.root.rstrip('/')}/{d}" for d in ("tmp", "log")]
            if own_app(manifest) else [],
            # what cloudinit/rails/app-build leaves there (bootsnap's cache)
            app_caches=[f"{app.root.rstrip('/')}/tmp/cache"] if own_app(manifest) else [])),
        File(SETUP, render_template(
            "app/setup.sh.j2", app_name=app.name, sysusers_file=SYSUSERS,
            tmpfiles_file=TMPFILES), mode=0o755),
    ]
    setup = [SETUP]
    if manifest.components.appserver is not None:
        db_port = manifest.components.postgresql.port if manifest.components.postgresql else 5432
        files.append(File(ENV_SETUP, render_template(
            "app/env.sh.j2",
            app_name=app.name,
            secret_store=db.password.store,
            secret_name=db.password.name,
            secret_tool=SECRET_TOOL,
            db_var=hosts_var(db.host_role),
            db_user=db.user,
            db_name=db.name,
            db_port=db_port,
            app_secrets=[(var, secret_key(var)) for var in sorted(app.secrets)],
            app_secret_vars=sorted(app.secrets),
        ), mode=0o755))
        if "appserver" in role.components:
            setup.append(ENV_SETUP)
    if app.code == "sample":
        # mongrel_rails only runs Rails apps: the Rack code comes with puma.
        appserver = manifest.components.appserver
        rack = appserver is not None and appserver.kind == "puma"
        for rel in SAMPLE_PAGES + (SAMPLE_CODE if rack else ()):
            files.append(File(f"{app.root.rstrip('/')}/{rel}",
                              read_static(f"{TEMPLATES_SUBDIR_APP}/{rel}")))
    return Fragment(component="app", files=tuple(files), setup=tuple(setup))
