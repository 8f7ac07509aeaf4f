"""The cutover's own login on the new server (manifest `cutover.receive`):
the db role created it at boot (render/cutover_login.py); the cutover's last
step takes its LOGIN away, and the new server's next setup run drops the
role and its pg_hba line for good."""

from __future__ import annotations

from builder.cutover import pg
from builder.cutover.config import CutoverConfig
from builder.errors import UserError


def retire(cfg: CutoverConfig) -> str:
    """ALTER ROLE <new_db.user> NOLOGIN, by that role itself (idempotent: a
    retry that can no longer log in finds it done)."""
    user = cfg.new.user
    try:
        pg.execute(cfg.new, f"ALTER ROLE {pg.ident(user)} NOLOGIN")
    except UserError as exc:
        if "not permitted to log in" not in str(exc):
            raise
    finally:
        pg.close_sessions()
    return (f"{user} NOLOGIN on the new server; its next boot (or "
            "`cutover-login.sh remove`) drops the role and its pg_hba line")
