"""PostgreSQL: configs, and a boot script for the instance store, cluster, role, database."""

from __future__ import annotations

import posixpath

from builder.manifest.model import Manifest, Role
from builder.render.common import (
    DISPATCHER,
    SECRET_TOOL,
    SETUP_DIR,
    UNIT_DIR,
    manifest_error,
    source_name,
)
from builder.render.fragment import File, Fragment
from builder.render.templates import pg_literal, render_template

SETUP = f"{SETUP_DIR}/postgresql.sh"
CLUSTER = "main"
CONF_DIR = "/etc/amibake/postgresql"


def service_name(version: str) -> str:
    return f"postgresql@{version}-{CLUSTER}.service"


def render(manifest: Manifest, role: Role) -> Fragment:
    pg = manifest.components.postgresql
    if pg is None:
        raise manifest_error(
            manifest, f"roles.{role.name}.components", "postgresql is not configured"
        )
    mount = pg.mount_point.rstrip("/") or "/"
    if not (pg.data_dir == mount or pg.data_dir.startswith(mount + "/")):
        raise manifest_error(
            manifest, "components.postgresql.data_dir",
            f"data_dir {pg.data_dir} is not under mount_point {pg.mount_point}",
            hint="the data directory belongs on the instance store",
        )
    app = manifest.app
    db = app.database
    rules = [
        _hba_line(r.type, r.database, r.user, r.address, r.method) for r in pg.hba
    ]
    app_rule = _hba_line("host", db.name, db.user, db.network, "scram-sha-256")
    if app_rule not in rules:  # the app's network, unless the manifest already lists it
        rules.append(app_rule)
    common = {"app_name": app.name, "manifest_file": source_name(manifest)}
    hba = render_template("postgresql/pg_hba.conf.j2", rules=rules, **common)
    conf = render_template(
        "postgresql/amibake.conf.j2",
        listen_addresses=pg_literal(pg.listen_addresses),
        port=pg.port,
        settings=[(k, _conf_value(v)) for k, v in sorted(pg.settings.items())],
        **common,
    )
    dropin = render_template(
        "postgresql/mnt.conf.j2", mount_point=mount, data_dir=posixpath.normpath(pg.data_dir)
    )
    setup = render_template(
        "postgresql/setup.sh.j2",
        version=pg.version,
        cluster=CLUSTER,
        port=pg.port,
        mount_point=mount,
        instance_store=pg.instance_store,
        data_dir=pg.data_dir,
        db_user=db.user,
        db_name=db.name,
        secret_tool=SECRET_TOOL,
        dispatcher=DISPATCHER,
        **common,
    )
    return Fragment(
        component="postgresql",
        packages=(f"postgresql-{pg.version}", f"postgresql-client-{pg.version}"),
        files=(
            File(f"{CONF_DIR}/pg_hba.conf", hba),
            File(f"{CONF_DIR}/amibake.conf", conf),
            File(f"{UNIT_DIR}/postgresql@.service.d/amibake-instance-store.conf", dropin),
            File(SETUP, setup, mode=0o755),
        ),
        services=(service_name(pg.version),),
        setup=(SETUP,),
    )


def _hba_line(kind: str, database: str, user: str, address: str, method: str) -> str:
    fields = [kind, database, user] + ([address] if kind != "local" else []) + [method]
    return "  ".join(fields)


def _conf_value(value: str) -> str:
    """postgresql.conf value: numbers and plain words bare, anything else quoted."""
    if value.replace(".", "", 1).isdigit() or value.isidentifier():
        return value
    return pg_literal(value)
