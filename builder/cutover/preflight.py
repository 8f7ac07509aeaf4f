"""Pre-flight checks: what must hold before anything is changed.

Each check reports its current result; `plan` lists them, the `preflight`
step refuses to go on while a blocking one fails. The one change made here
is explicit: `--fix-replica-identity` sets REPLICA IDENTITY FULL on tables
that have neither a primary key nor a replica identity index.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from builder.cutover import files, pg
from builder.cutover.config import Conn, CutoverConfig
from builder.cutover.db_replicate import ROLE as REPLICATION_ROLE
from builder.cutover.dns.base import DnsProvider, record_type, resolve_site
from builder.cutover.pg import ServerFacts
from builder.errors import UserError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


#: logical replication (publications, subscriptions, pg_replication_slots
#: confirmed_flush_lsn, pg_current_wal_lsn, pg_sequences) is PostgreSQL 10+
REPLICATE_MIN = 100000
#: the oldest server the local pg_dump/pg_dumpall (PostgreSQL 15's) can read
LOCAL_DUMP_MIN = 90200
#: roles (ALTER ROLE … NOLOGIN: the freeze) exist from PostgreSQL 8.1
DUMP_MIN = 80100


def version_checks(strategy: str, old: ServerFacts, new: ServerFacts, *,
                   old_pg_dump: str = "local") -> list[Check]:
    """Whether `strategy` can move `old` onto `new`, from the versions and
    settings read from both servers: a strategy that cannot work is refused
    here, before anything changes, with the reason and what can work."""
    about = (f"old PostgreSQL {old.version} (standard_conforming_strings "
             f"{'on' if old.standard_conforming_strings else 'off'}, {old.encoding}); "
             f"new {new.version} ({new.encoding})")
    checks = [Check(
        "new server not older than the old one",
        new.version_num >= old.version_num or new.major == old.major,
        about, "the new server must run the same or a newer PostgreSQL major than the old")]
    if strategy == "replicate":
        ok = old.version_num >= REPLICATE_MIN and new.version_num >= REPLICATE_MIN
        other = ("use strategy: dump" if old.version_num >= LOCAL_DUMP_MIN else
                 "use strategy: dump with the old host's own pg_dump")
        checks.append(Check(
            "strategy replicate fits the servers", ok,
            f"logical replication needs PostgreSQL 10 or later on both servers; {about}",
            f"{other} (it reads PostgreSQL {DUMP_MIN // 10000}.{DUMP_MIN // 100 % 100} "
            "and later), or upgrade the old server to 10+ first"))
    elif old_pg_dump != "local":
        checks.append(Check(
            "strategy dump fits the servers", old.version_num >= DUMP_MIN,
            f"the old host's own pg_dump ({old_pg_dump}), plain SQL rewritten for "
            f"{new.major}; {about}",
            "PostgreSQL before 8.1 has no roles to freeze writes with: upgrade it first"))
    else:
        ok = old.version_num >= LOCAL_DUMP_MIN
        checks.append(Check(
            "strategy dump fits the servers", ok,
            f"the local pg_dump (PostgreSQL 15) reads servers from 9.2; {about}",
            "PostgreSQL 8.1-9.1 needs the old server's own pg_dump: set cutover.old_pg_dump: "
            "ssh:user@old-host (streamed from there, no copy on disk)"
            if old.version_num >= DUMP_MIN else
            "PostgreSQL before 8.1 has no roles to freeze writes with: upgrade it first"))
    if old.encoding != new.encoding:
        checks.append(Check(
            "encodings can be converted", old.encoding != "SQL_ASCII",
            f"old {old.encoding}, new {new.encoding}",
            "SQL_ASCII holds bytes of no known encoding: create the new database with "
            "ENCODING 'SQL_ASCII', or clean the data into one encoding first"))
    return checks


def _connect(name: str, conn: Conn) -> Check:
    try:
        version = pg.value(conn, "SHOW server_version", timeout=15)
    except UserError as exc:
        return Check(name, False, str(exc),
                     "check the address, pg_hba.conf and the password secret")
    return Check(name, True, f"{conn} (server {version})")


def _superuser(name: str, conn: Conn) -> Check:
    sup = pg.value(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    return Check(name, sup == "t", f"{conn.user} is {'a' if sup == 't' else 'not a'} superuser",
                 "the cutover needs a superuser on both servers (subscriptions, role copy)")


def tables_without_identity(conn: Conn) -> list[str]:
    """Tables whose UPDATE/DELETE break under a FOR ALL TABLES publication."""
    rows = pg.query(conn, """
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%' AND c.relpersistence <> 't' AND NOT c.relispartition
           AND (c.relreplident = 'n'
                OR (c.relreplident = 'd' AND NOT EXISTS (
                      SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
                OR (c.relreplident = 'i' AND NOT EXISTS (
                      SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))
         ORDER BY 1""")
    return [r[0] for r in rows]


def fix_replica_identity(conn: Conn, tables: list[str]) -> None:
    pg.execute(conn, "\n".join(f"ALTER TABLE {t} REPLICA IDENTITY FULL;" for t in tables))


def _free_bytes(conn: Conn) -> int | None:
    """Free space under the server's data directory, asked of the server
    itself (COPY FROM PROGRAM needs superuser, which the cutover has)."""
    datadir = pg.value(conn, "SHOW data_directory")
    rows = pg.query(conn, f"""
        CREATE TEMP TABLE IF NOT EXISTS amibake_df (line text);
        TRUNCATE amibake_df;
        COPY amibake_df FROM PROGRAM {pg.literal(conn, "df -Pk " + _sh_quote(datadir))};
        SELECT line FROM amibake_df;""")
    for (line,) in rows[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[3].isdigit():
            return int(fields[3]) * 1024
    return None


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _hba_allows(conn: Conn, dbname: str, user: str) -> bool:
    rows = pg.query(conn, "SELECT type, database, user_name, auth_method FROM pg_hba_file_rules "
                          "WHERE error IS NULL ORDER BY line_number")
    for typ, dbs, users, method in rows:
        if not typ.startswith("host"):
            continue
        dbl = dbs.strip("{}").split(",")
        usl = users.strip("{}").split(",")
        if ("all" in dbl or dbname in dbl) and ("all" in usl or user in usl):
            return method != "reject"
    return False


def run_preflight(cfg: CutoverConfig, *, fix_replica_identity_now: bool = False) -> list[Check]:
    """Every check, in order; stops early only when a server is unreachable."""
    checks = [_connect("old database reachable", cfg.old),
              _connect("new database reachable", cfg.new)]
    if not all(c.ok for c in checks):
        return checks
    versions = version_checks(cfg.strategy, pg.server_facts(cfg.old), pg.server_facts(cfg.new),
                              old_pg_dump=cfg.cutover.old_pg_dump)
    checks += versions
    if not all(c.ok for c in versions):
        return checks  # the strategy's own checks would only fail on that server's catalog
    checks += [_superuser("old: cutover user is superuser", cfg.old),
               _superuser("new: cutover user is superuser", cfg.new)]
    app = pg.query(cfg.old, "SELECT rolsuper FROM pg_roles WHERE rolname = "
                            f"{pg.literal(cfg.old, cfg.app_user)}")
    checks.append(Check(
        "app role can be frozen",
        bool(app) and app[0][0] == "f",
        f"role {cfg.app_user} " + ("missing" if not app else
                                   "is a superuser" if app[0][0] == "t" else "exists, not super"),
        "the freeze takes LOGIN away from app.database.user; it must exist and not be superuser",
    ))
    size = int(pg.value(cfg.old, "SELECT pg_database_size(current_database())") or 0)
    free = _free_bytes(cfg.new)
    need = int(size * 1.2)
    checks.append(Check(
        "new server has free space",
        free is None or free >= need,
        f"database {size / 2**20:.0f} MiB; free on the new server "
        + ("unknown" if free is None else f"{free / 2**20:.0f} MiB"),
        "grow the new server's data volume",
    ))
    if (cfg.strategy == "dump" and cfg.cutover.dump_format == "directory"
            and cfg.cutover.old_pg_dump == "local"):
        local_free = shutil.disk_usage(tempfile.gettempdir()).free
        checks.append(Check(
            "local space for the dump", local_free >= size,
            f"{local_free / 2**20:.0f} MiB free in {tempfile.gettempdir()}",
            "set TMPDIR to a larger disk or use dump_format: stream"))
    if cfg.cutover.files is not None:
        problem = files.source_problem(cfg.cutover.files)
        checks.append(Check(
            "files: the old uploads directory exists", not problem,
            problem or f"{cfg.cutover.files.source} is a directory",
            "check cutover.files.source (and its SSH access)"))
    if cfg.strategy == "replicate":
        wal = pg.value(cfg.old, "SHOW wal_level")
        checks.append(Check(
            "old: wal_level = logical", wal == "logical", f"wal_level = {wal}",
            "set wal_level = logical on the old server and RESTART it — plan that restart "
            "days ahead of the window"))
        slots = int(pg.value(cfg.old, "SHOW max_replication_slots") or 0)
        senders = int(pg.value(cfg.old, "SHOW max_wal_senders") or 0)
        checks.append(Check("old: replication slots and senders", slots > 0 and senders > 0,
                            f"max_replication_slots = {slots}, max_wal_senders = {senders}",
                            "both must be at least 1 (restart needed)"))
        workers = int(pg.value(cfg.new, "SHOW max_logical_replication_workers") or 0)
        checks.append(Check("new: logical replication workers", workers > 0,
                            f"max_logical_replication_workers = {workers}",
                            "set it to at least 2 on the new server"))
        checks.append(Check(
            "old: pg_hba admits the subscriber",
            _hba_allows(cfg.old, cfg.old.dbname, REPLICATION_ROLE),
            f"host line for database {cfg.old.dbname}, user {REPLICATION_ROLE} "
            "(the subscription's own login, created for the cutover)",
            "replication connections match database-name lines: add a host line for it"))
        missing = tables_without_identity(cfg.old)
        if missing and fix_replica_identity_now:
            fix_replica_identity(cfg.old, missing)
            checks.append(Check("tables have a replica identity", True,
                                f"set REPLICA IDENTITY FULL on {', '.join(missing)}"))
        else:
            checks.append(Check(
                "tables have a replica identity", not missing,
                "all tables have one" if not missing else
                f"no primary key or replica identity: {', '.join(missing)}",
                "a FOR ALL TABLES publication breaks their UPDATE/DELETE on the live server; "
                "add primary keys, or run with --fix-replica-identity (REPLICA IDENTITY FULL)"))
    return checks


def site_address(dns: DnsProvider) -> list[Check]:
    """A host-name new_address (a load balancer's DNS name): it resolves, and the
    record's name holds nothing a CNAME cannot share it with. Reads only."""
    spec = dns.spec
    if record_type(spec.new_address) != "CNAME":
        return []
    try:
        address = resolve_site(spec)
        checks = [Check("new site's name resolves", True,
                        f"{spec.new_address} → {address}")]
    except UserError as exc:
        checks = [Check("new site's name resolves", False, str(exc), exc.hint)]
    try:
        others = dns.other_types()
    except UserError as exc:
        return [*checks, Check("record can become a CNAME", False, str(exc), exc.hint)]
    checks.append(Check(
        "record can become a CNAME", not others,
        f"{spec.record} holds only its A record" if not others else
        f"{spec.record} also holds {', '.join(others)} record(s); a CNAME shares its name "
        "with nothing",
        "move them, or give the site a name of its own"))
    return checks


def dns_update(dns: DnsProvider) -> Check:
    """A no-op update of the record (pre-flight of `run` only: `plan` writes
    nothing): a wrong key or a missing update right shows now, before the
    TTL is lowered, not inside the window."""
    try:
        rec = dns.probe_update()
    except UserError as exc:
        return Check("DNS record can be updated", False, str(exc),
                     exc.hint or "check cutover.dns (key, server, update rights)")
    return Check("DNS record can be updated", True,
                 f"{dns.spec.record} written back unchanged ({rec.address}, TTL {rec.ttl} s)")


def require(checks: list[Check]) -> str:
    failed = [c for c in checks if not c.ok]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"pre-flight check failed: {first.name}: {first.detail}{more}",
                        hint=first.hint)
    return f"{len(checks)} checks passed"


