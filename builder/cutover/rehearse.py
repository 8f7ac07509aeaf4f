"""`amibake cutover rehearse`: copy production onto the new server without
freezing it or touching DNS, run every gate and the smoke tests, time each
step the window will repeat, then reset the new server.

The copy is read-only on the old server: `pg_dump` inside a snapshot the
rehearsal exports and holds, so the gates compare the copy with exactly the
data it was made from while the app keeps writing. No publication, slot or
replication login is created there, whatever the strategy (with `replicate`
the window's catch-up cannot be rehearsed without them and is reported as
not measured). The figures are kept beside the cutover's state file and the
runbook (`cutover plan`) shows the last ones.

Reset: the new database is dropped and created again as it was (owner,
encoding, locale), the roles the rehearsal created are dropped and the app
role's LOGIN is put back as it was. The uploads copied to the new server are
kept: the real run's rsync --delete starts from them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from builder.atomic import write_atomically
from builder.cutover import db_dump, files, pg, preflight, verify
from builder.cutover.config import Conn, CutoverConfig
from builder.cutover.db_roles import copy_roles, set_login
from builder.cutover.dns.base import DnsProvider
from builder.cutover.state import now_iso
from builder.cutover.steps import smoke_new_site
from builder.errors import UserError

Say = Callable[[str], None]

#: steps of the real run a rehearsal cannot time, with the reason
_NOT_MEASURED = {
    "maintenance_on": "writes nothing in a rehearsal (one nginx reload, well under a second)",
    "db_freeze": "production is not frozen in a rehearsal (ends the app's sessions, ~1 s)",
    "dns_switch": "DNS is not touched in a rehearsal (one signed update, ~1 s)",
}


def figures_path(state_path: Path) -> Path:
    """Where the last rehearsal's figures live: beside the cutover's state file."""
    return state_path.with_name(state_path.stem + ".rehearsal.json")


def load_figures(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable rehearsal figures: {exc}",
                        hint="run `amibake cutover rehearse` again, or delete the file") from exc
    return doc if isinstance(doc, dict) else None


# ------------------------------------------------------------------ the new server as it was


def _admin(conn: Conn) -> Conn:
    """The same server, connected to its maintenance database."""
    return replace(conn, dbname="postgres" if conn.dbname != "postgres" else "template1")


class NewServer:
    """What the rehearsal changes on the new server, read before it does, and
    the reset that puts it back."""

    def __init__(self, cfg: CutoverConfig) -> None:
        self.cfg = cfg
        new = cfg.new
        have = verify.tables(new)
        if have:
            raise UserError(
                f"the new database {new} already holds {len(have)} table(s) "
                f"({', '.join(have[:3])}{' …' if len(have) > 3 else ''})",
                hint="a rehearsal resets the new database afterwards: run it before the "
                     "cutover starts, on an empty new database")
        row = pg.query(_admin(new), f"""
            SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype
              FROM pg_database WHERE datname = {pg.literal(_admin(new), new.dbname)}""")
        if not row:
            raise UserError(f"the new server has no database {new.dbname}",
                            hint="the db role creates it at boot; check the new server")
        self.owner, self.encoding, self.collate, self.ctype = row[0]
        self.roles = {r[0] for r in pg.query(new, "SELECT rolname FROM pg_roles")}
        login = pg.query(new, "SELECT rolcanlogin FROM pg_roles WHERE rolname = "
                              + pg.literal(new, cfg.app_user))
        self.app_login: bool | None = login[0][0] == "t" if login else None

    def reset(self) -> str:
        new, cfg = self.cfg.new, self.cfg
        pg.close_sessions()  # our own session on the database goes first
        admin = _admin(new)
        db = pg.ident(new.dbname)
        pg.execute(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg.execute(admin, f"CREATE DATABASE {db} OWNER {pg.ident(self.owner)} TEMPLATE template0 "
                          f"ENCODING {pg.literal(admin, self.encoding)} "
                          f"LC_COLLATE {pg.literal(admin, self.collate)} "
                          f"LC_CTYPE {pg.literal(admin, self.ctype)}")
        added = sorted({r[0] for r in pg.query(admin, "SELECT rolname FROM pg_roles")}
                       - self.roles)
        for role in added:
            pg.execute(admin, f"DROP ROLE IF EXISTS {pg.ident(role)}")
        if self.app_login is not None:
            set_login(admin, cfg.app_user, self.app_login)
        pg.close_sessions()
        return (f"database {new.dbname} dropped and created empty again"
                + (f"; role(s) dropped: {', '.join(added)}" if added else ""))


# ------------------------------------------------------------------ the rehearsal


class _Timer:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.rows: list[dict[str, Any]] = []

    def __call__(self, name: str, phase: str, fn: Callable[[], str]) -> None:
        self.say(f"{name} …")
        t0 = time.monotonic()
        detail = fn()
        seconds = round(time.monotonic() - t0, 3)
        self.rows.append({"step": name, "phase": phase, "seconds": seconds, "detail": detail})
        self.say(f"{name}: {seconds:.2f} s — {detail}")


def _gate(c: verify.Comparison) -> str:
    if not c.ok:
        raise UserError(f"rehearsal gate failed: {c.summary()}",
                        hint="production was not changed; fix the cause before the window")
    return c.summary()


def _sequences_gate(cfg: CutoverConfig) -> str:
    """The copy's sequences may lag production's (sequences are not
    transactional and the app kept writing); never ahead, never missing."""
    old, new = verify.both(verify.sequences, cfg.old, cfg.new)
    bad = [f"{k}: old {old.get(k, 'missing')} new {new.get(k, 'missing')}"
           for k in sorted(set(old) | set(new))
           if k not in old or k not in new or (new[k] or 0) > (old[k] or 0)]
    if bad:
        raise UserError("rehearsal gate failed: sequences: " + "; ".join(bad[:5]),
                        hint="production was not changed; fix the cause before the window")
    return f"sequences: {len(old)} present, none ahead of production"


def rehearse(cfg: CutoverConfig, dns: DnsProvider, *, say: Say,
             save_to: Path | None = None) -> dict[str, Any]:
    """Run the rehearsal; the figures are returned (and saved to `save_to`)."""
    cut = cfg.cutover
    timer = _Timer(say)
    rec = dns.get()  # read only: the rehearsal never writes DNS
    timer("preflight", "prepare", lambda: preflight.require(preflight.run_preflight(cfg)))
    new_server = NewServer(cfg)
    snapshot: verify.Snapshot | None = None
    reset = ""
    try:
        timer("db_copy_roles", "prepare", lambda: copy_roles(cfg))
        # the old server's data as of now, held for the copy and the gates
        snapshot = verify.Snapshot(cfg.old)
        snap_id = snapshot.query("SELECT pg_export_snapshot()")[0][0]
        copy_name = "db_dump_restore" if cfg.strategy == "dump" else "db_initial_copy"
        timer(copy_name, "window" if cfg.strategy == "dump" else "prepare",
              lambda: db_dump.dump_restore(cfg, snapshot=snap_id))
        if cut.files is not None:
            spec = cut.files
            timer("files_presync", "prepare", lambda: files.sync(spec))
            timer("files_final_sync", "window", lambda: files.sync(spec))
        snap = snapshot
        timer("verify_db", "window", lambda: _gate(verify.compare(
            "row counts", verify.row_counts(cfg.old, snap), verify.row_counts(cfg.new)))
            + "; " + _sequences_gate(cfg))
        timer("verify_checksums", "window" if cut.checksum_when == "before_switch" else "after",
              lambda: _gate(verify.compare("table checksums",
                                           verify.table_checksums(cfg.old, snap),
                                           verify.table_checksums(cfg.new))))
        snapshot.close()
        snapshot = None
        if cut.files is not None:
            spec = cut.files
            timer("verify_files", "window", lambda: _files_gate(spec))
        # the new app servers need their role's LOGIN for the smoke test; the
        # reset puts it back as it was
        set_login(cfg.new, cfg.app_user, True)
        timer("smoke_new_site", "window", lambda: smoke_new_site(cfg))
    finally:
        if snapshot is not None:
            snapshot.close()
        try:
            reset = new_server.reset()
        finally:
            pg.close_sessions()
        say(f"reset: {reset}")
    after = dns.get()
    if (after.address, after.ttl) != (rec.address, rec.ttl):
        say(f"warning: {cut.dns.record} changed during the rehearsal (not by amibake): "
            f"{rec.address} TTL {rec.ttl} → {after.address} TTL {after.ttl}")
    window_s = round(sum(r["seconds"] for r in timer.rows if r["phase"] == "window"), 3)
    not_measured = dict(_NOT_MEASURED)
    if cfg.strategy == "replicate":
        not_measured["db_catch_up"] = ("needs the publication and slot a rehearsal does not "
                                       "create; the initial copy is timed instead (prepare)")
    doc: dict[str, Any] = {
        "rehearsed_at": now_iso(),
        "strategy": cfg.strategy,
        "dns": {"record": cut.dns.record, "address": rec.address, "ttl": rec.ttl,
                "touched": False},
        "steps": timer.rows,
        "window_measured_s": window_s,
        "window_minutes": cut.window_minutes,
        "fits_window": window_s <= cut.window_minutes * 60,
        "not_measured": not_measured,
        "reset": reset,
    }
    if save_to is not None:
        save_to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(save_to, json.dumps(doc, indent=2) + "\n", mode=0o600)
    return doc


def _files_gate(spec: Any) -> str:
    check = files.verify(spec)
    if not check.ok:
        raise UserError(f"rehearsal gate failed: {len(check.differences)} file(s) differ: "
                        + "; ".join(check.differences[:5]),
                        hint="production was not changed; is something writing there?")
    return f"{check.files} file(s) equal by checksum"
