"""The application: the sample Rack app, its unix user, directories and env file."""

from __future__ import annotations

from builder.manifest.model import Manifest, Role
from builder.render.common import SECRET_TOOL, SETUP_DIR, hosts_var
from builder.render.fragment import File, Fragment
from builder.render.templates import TEMPLATES_SUBDIR_APP, read_static, render_template

SETUP = f"{SETUP_DIR}/app.sh"
ENV_SETUP = f"{SETUP_DIR}/app-env.sh"
SYSUSERS = "/usr/lib/sysusers.d/amibake-app.conf"
TMPFILES = "/usr/lib/tmpfiles.d/amibake-app.conf"

#: The sample app's files under cloudinit/app/, relative to app.root: its
#: static pages (nginx serves them), and the Rack code an app server runs.
SAMPLE_PAGES: tuple[str, ...] = ("public/404.html", "public/500.html")
SAMPLE_CODE: tuple[str, ...] = ("config.ru", "lib/payroll_app.rb")


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
            uploads_dir=app.uploads_dir)),
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
