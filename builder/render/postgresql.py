"""PostgreSQL: configs, and a boot script for the instance store, cluster, role, database."""

from __future__ import annotations

import posixpath

from builder.inputs import read_input
from builder.manifest.backup_model import Backup
from builder.manifest.model import Manifest, Role
from builder.render import pgbackrest as engine
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
#: runs before PostgreSQL on every boot when backups are configured
RESTORE_UNIT = "amibake-db-restore.service"
#: roles.json's name for the repository passphrase (resolved on the instance)
PASSPHRASE_SECRET = "backup_passphrase"


def service_name(version: str) -> str:
    return f"postgresql@{version}-{CLUSTER}.service"


def local_db_unit(manifest: Manifest) -> str:
    """The unit an app on the database's machine (all-in-one) starts after."""
    pg = manifest.components.postgresql
    return service_name(pg.version) if pg is not None else "postgresql.service"


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
    backup = pg.backup
    hba = render_template("postgresql/pg_hba.conf.j2", rules=rules, **common)
    conf = render_template(
        "postgresql/amibake.conf.j2",
        listen_addresses=pg.listen_addresses,
        port=pg.port,
        settings=sorted(pg.settings.items()),
        archive_settings=sorted(engine.postgresql_settings(manifest).items()),
        **common,
    )
    dropin = render_template(
        "postgresql/mnt.conf.j2", mount_point=mount, data_dir=data_dir, backup=bool(backup)
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
        backup=bool(backup),
        default_steps=("start_postgresql create_database" if backup
                       else "mount_store create_cluster create_database"),
        **(_backup_context(manifest, backup) if backup else {}),
        **common,
    )
    files = [
        File(f"{CONF_DIR}/pg_hba.conf", hba),
        File(f"{CONF_DIR}/amibake.conf", conf),
        File(f"{UNIT_DIR}/postgresql@.service.d/amibake-instance-store.conf", dropin),
        File(f"{UNIT_DIR}/postgresql@.service.d/amibake-early-start.conf",
             render_template("postgresql/early-start.conf.j2", version=pg.version)),
        File(SETUP, setup, mode=0o755),
    ]
    packages = [f"postgresql-{pg.version}", f"postgresql-client-{pg.version}"]
    services = [service_name(pg.version)]
    if backup:
        backup_files, timers = _backup_files(manifest, backup, pg.version, common)
        files += backup_files
        packages.append("pgbackrest")
        services += timers
    return Fragment(
        component="postgresql",
        packages=tuple(packages),
        files=tuple(files),
        services=tuple(services),
        setup=(SETUP,),
    )


def _backup_context(manifest: Manifest, backup: Backup) -> dict[str, object]:
    """The setup script's values for restore-or-create at boot (builder/render/pgbackrest.py's)."""
    restore_args = ([] if backup.restore_on_boot == "never"
                    else engine.boot_restore_args(backup))
    return {
        "engine_args": engine.engine_args(manifest),
        "restore_args": restore_args,
        "restore_command": engine.restore_command(manifest),
        "restore_on_boot": backup.restore_on_boot,
        "repo_url": engine.repo_url(manifest, backup),
        "include_dir": engine.CONF_INCLUDE_DIR,
        "cipher_name": posixpath.basename(engine.CIPHER_CONF),
        "cipher_item": PASSPHRASE_SECRET if backup.repository.cipher_passphrase else "",
    }


def _backup_files(manifest: Manifest, backup: Backup, version: str,
                  common: dict[str, str]) -> tuple[list[File], list[str]]:
    """pgbackrest.conf, the endpoint's CA, the backup timers and the boot unit;
    and the timers the role enables."""
    ca = backup.repository.ca_file
    instance = engine.Instance(ca_file=engine.INSTANCE_CA_FILE if ca else "")
    files = [File(engine.CONF_PATH, engine.pgbackrest_conf(manifest, instance=instance).encode(),
                  mode=0o640, owner="root:postgres")]
    if ca:
        pem = read_input(manifest.source.parent / ca, 1 << 20, "repository.ca_file")
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise manifest_error(manifest, "components.postgresql.backup.repository.ca_file",
                                 f"{ca} holds no PEM certificate",
                                 hint="name the CA bundle that signs the endpoint's certificate")
        files.append(File(engine.INSTANCE_CA_FILE, pem))
    units = engine.timer_units(manifest)
    files += [File(f"{UNIT_DIR}/{name}", text.encode()) for name, text in sorted(units.items())]
    files.append(File(f"{UNIT_DIR}/{RESTORE_UNIT}", render_template(
        "postgresql/db-restore.service.j2", version=version, cluster=CLUSTER, setup=SETUP,
        repo_url=engine.repo_url(manifest, backup), **common)))
    return files, [name for name in sorted(units) if name.endswith(".timer")]


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
