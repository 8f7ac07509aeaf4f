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
from builder.render.quoting import Unquotable, hba_token
from builder.render.templates import render_template

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
    mount = posixpath.normpath(pg.mount_point) if pg.mount_point else ""
    data_dir = posixpath.normpath(pg.data_dir) if pg.data_dir else ""
    # normalised first: /mnt/../etc is not under /mnt
    if not (mount.startswith("/") and data_dir.startswith("/")
            and (data_dir == mount or data_dir.startswith(mount.rstrip("/") + "/"))):
        raise manifest_error(
            manifest, "components.postgresql.data_dir",
            f"data_dir {pg.data_dir} is not under mount_point {pg.mount_point}",
            hint="the data directory belongs on the instance store",
        )
    app = manifest.app
    db = app.database
    rules = [
        _hba_line(r.type, r.database, r.user, r.address, r.method, keywords=True)
        for r in pg.hba
    ]
    # The app's own database and role are names, even if called `all`.
    app_rule = _hba_line("host", db.name, db.user, db.network, "scram-sha-256")
    if app_rule not in rules:  # the app's network, unless the manifest already lists it
        rules.append(app_rule)
    common = {"app_name": app.name, "manifest_file": source_name(manifest)}
    hba = render_template("postgresql/pg_hba.conf.j2", rules=rules, **common)
    conf = render_template(
        "postgresql/amibake.conf.j2",
        listen_addresses=pg.listen_addresses,
        port=pg.port,
        settings=sorted(pg.settings.items()),
        **common,
    )
    dropin = render_template(
        "postgresql/mnt.conf.j2", mount_point=mount, data_dir=data_dir
    )
    setup = render_template(
        "postgresql/setup.sh.j2",
        version=pg.version,
        cluster=CLUSTER,
        port=pg.port,
        mount_point=mount,
        instance_store=pg.instance_store,
        data_dir=data_dir,
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


def _hba_line(kind: str, database: str, user: str, address: str, method: str,
              *, keywords: bool = False) -> str:
    if kind not in _HBA_TYPES or method not in _HBA_METHODS:
        raise Unquotable(f"pg_hba rule {kind!r} ... {method!r}: unknown type or method")
    fields = [kind, hba_token(database, keyword=keywords), hba_token(user, keyword=keywords)]
    if kind != "local":
        fields.append(hba_token(address, keyword=keywords))
    return "  ".join(fields + [method])


_HBA_TYPES = ("local", "host", "hostssl", "hostnossl")
_HBA_METHODS = ("scram-sha-256", "md5", "peer", "trust", "reject")
