"""Moved to builder/render/pgbackrest.py (the renderer of pgBackRest's files:
the db role's renderer uses it, and render must not import db). These names
stay importable from here for existing callers; new code imports the renderer."""

from builder.render.pgbackrest import (
    CIPHER_CONF,
    CONF_INCLUDE_DIR,
    CONF_PATH,
    Instance,
    archive_command,
    backup_of,
    engine_args,
    pgbackrest_conf,
    postgresql_settings,
    repo_path,
    repo_url,
    restore_command,
    stanza,
    timer_units,
)

__all__ = ["CIPHER_CONF", "CONF_INCLUDE_DIR", "CONF_PATH", "Instance", "archive_command",
           "backup_of", "engine_args", "pgbackrest_conf", "postgresql_settings", "repo_path",
           "repo_url", "restore_command", "stanza", "timer_units"]
