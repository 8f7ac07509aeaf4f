"""The cutover's login on the new db server (manifest `cutover.receive`): a
setup script, run after PostgreSQL's own, that creates cutover.new_db.user
as a superuser LOGIN with the password new_db.password names (resolved on
the instance by amibake-secret) and puts one pg_hba line for the address the
cutover runs from at the top of pg_hba.conf.

After the cutover its last step takes LOGIN away (`ALTER ROLE … NOLOGIN`,
the only thing it can do to itself over SQL); the script, at the next boot
or when run with `remove`, then drops the role and the line and leaves a
flag so the login is never created again on this server.

Not in RENDERERS: it is no component of its own but a hook of the db role
(any role with postgresql) while the manifest has `cutover.receive`."""

from __future__ import annotations

from builder.manifest.model import Manifest, Role
from builder.render.common import SECRET_TOOL, SETUP_DIR, source_name
from builder.render.fragment import File, Fragment
from builder.render.postgresql import CLUSTER
from builder.render.quoting import hba_token
from builder.render.templates import render_template

SETUP = f"{SETUP_DIR}/cutover-login.sh"
#: the roles.json secret the script asks amibake-secret for
SECRET = "cutover_password"
STATE_DIR = "/var/lib/amibake"


def wanted(manifest: Manifest, role: Role) -> bool:
    cut = manifest.cutover
    return (cut is not None and cut.receive is not None and cut.new_db.password is not None
            and "postgresql" in role.components and manifest.components.postgresql is not None)


def render(manifest: Manifest, role: Role) -> Fragment | None:
    if not wanted(manifest, role):
        return None
    cut, pg = manifest.cutover, manifest.components.postgresql
    assert cut is not None and cut.receive is not None and pg is not None
    # every database (the cutover also works in `postgres`); the role and the
    # address are names, never pg_hba keywords
    line = "  ".join(["hostssl" if cut.receive.tls else "host", "all",
                      hba_token(cut.new_db.user), hba_token(cut.receive.from_address),
                      "scram-sha-256"])
    script = render_template(
        "cutover/login.sh.j2", app_name=manifest.app.name, manifest_file=source_name(manifest),
        version=pg.version, cluster=CLUSTER, port=pg.port, role=cut.new_db.user,
        hba_line=line, secret=SECRET, secret_tool=SECRET_TOOL, state_dir=STATE_DIR)
    return Fragment(component="cutover_login", files=(File(SETUP, script, mode=0o755),),
                    setup=(SETUP,))
