r"""Strategy `dump` from servers this machine's pg_dump cannot read
(PostgreSQL 8.1-9.1): the old host's own pg_dump over SSH, its plain SQL
rewritten for PostgreSQL 15 as it streams into psql in one transaction.

No package carries an 8.x or 9.x server, so the restore side is fed a dump
in that era's format (standard_conforming_strings off, backslash escapes,
E'' literals, WITH OIDS, CREATE PROCEDURAL LANGUAGE); the SSH side runs for
real against a real sshd, with a real PostgreSQL 10 behind it."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cutover import checklist, db_dump, dump_sql, pg, verify
from builder.cutover.config import derive
from builder.cutover.state import CutoverState
from builder.errors import UserError
from tests.cutover_fixtures import *  # noqa: F403
from tests.cutover_fixtures import (
    NEW_ADDR,
    SERVER_NAME,
    Cluster,
    Knot,
    Site,
    Sshd,
    app_schema,
    cutover_manifest,
    destroy_cluster,
    run_under_writer,
    start_cluster,
)

#: pg_dump 8.x's plain output, as an old host would send it
DUMP_8X = r"""--
-- PostgreSQL database dump
--

SET client_encoding = 'UTF8';
SET standard_conforming_strings = off;
SET check_function_bodies = false;
SET client_min_messages = warning;
SET escape_string_warning = off;

--
-- Name: plpgsql; Type: PROCEDURAL LANGUAGE; Schema: -; Owner: postgres
--

CREATE PROCEDURAL LANGUAGE plpgsql;

SET search_path = public, pg_catalog;

SET default_tablespace = '';

SET default_with_oids = true;

CREATE TABLE employees (
    id integer NOT NULL,
    name character varying(100),
    note text
);

SET default_with_oids = false;

CREATE TABLE payslips (
    id integer NOT NULL,
    employee_id integer,
    path text
)
WITH OIDS;

CREATE SEQUENCE employees_id_seq
    INCREMENT BY 1
    NO MAXVALUE
    NO MINVALUE
    CACHE 1;

ALTER SEQUENCE employees_id_seq OWNED BY employees.id;

SELECT pg_catalog.setval('employees_id_seq', 3, true);

ALTER TABLE employees ALTER COLUMN id SET DEFAULT nextval('employees_id_seq'::regclass);

CREATE FUNCTION greeting(text) RETURNS text
    AS $$
BEGIN
  RETURN 'it''s ' || $1 || '\\';
END;
$$
    LANGUAGE plpgsql;

CREATE VIEW paths AS
    SELECT ('C:\\payroll\\' || employees.name) AS path FROM employees;

COPY employees (id, name, note) FROM stdin;
1	Zoë	tab\there
2	O'Brien	back\\slash
3	\N	line\nbreak
\.

INSERT INTO payslips VALUES (1, 1, 'C:\\slips\\2010\\01.pdf');
INSERT INTO payslips VALUES (2, 2, E'quote\'s \\ end');

ALTER TABLE ONLY employees
    ADD CONSTRAINT employees_pkey PRIMARY KEY (id);

ALTER TABLE ONLY payslips
    ADD CONSTRAINT payslips_pkey PRIMARY KEY (id);

REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT ALL ON SCHEMA public TO PUBLIC;

--
-- PostgreSQL database dump complete
--
"""


def lines(text: str) -> list[str]:
    """The dump's bytes (UTF-8, as its client_encoding says) as the restore
    side reads them: one latin-1 character per byte."""
    return text.encode().decode("latin-1").splitlines(keepends=True)


@pytest.fixture
def new15(pg_template: Path) -> Iterator[Cluster]:
    c = start_cluster(pg_template, "new")
    try:
        c.sql("CREATE DATABASE payroll", dbname="postgres")
        yield c
    finally:
        pg.close_sessions()
        destroy_cluster(c)


def test_an_8x_dump_restored_onto_15_values_unchanged(new15: Cluster) -> None:
    new = new15
    new.sql("CREATE TABLE leftover (x int)")  # a resume: the new database starts clean
    rewrites = db_dump.restore_plain(new.conn(), lines(DUMP_8X))
    assert rewrites.oids_dropped == 2 and rewrites.languages == 1 and rewrites.copy_rows == 3
    assert new.sql("SELECT id, name, note FROM employees ORDER BY id") == [
        (1, "Zoë", "tab\there"), (2, "O'Brien", "back\\slash"), (3, None, "line\nbreak")]
    assert new.sql("SELECT path FROM payslips ORDER BY id") == [
        ("C:\\slips\\2010\\01.pdf",), ("quote's \\ end",)]
    assert new.sql("SELECT path FROM paths ORDER BY 1")[0] == ("C:\\payroll\\O'Brien",)
    # a function body is text: PostgreSQL 15 reads its '\\' with
    # standard_conforming_strings on (two backslashes, where 8.x returned
    # one); the restore names such functions for the operator to check
    assert new.sql("SELECT greeting('Pat')") == [("it's Pat\\\\",)]
    assert rewrites.backslash_functions == ["greeting"]
    assert "check 1 function(s) with backslashes" in rewrites.summary()
    assert new.sql("SELECT nextval('employees_id_seq')") == [(4,)]
    assert not new.sql("SELECT 1 FROM pg_class WHERE relname = 'leftover'")


@pytest.mark.parametrize(("bad", "why"), [
    ("\\! touch /tmp/amibake-canary\n", "meta-command"),
    ("COPY employees (id) FROM stdin;\n1\n", "ends inside COPY data"),
    ("SELECT no_such_function();\n", "no_such_function"),
])
def test_a_refused_or_failing_dump_applies_nothing(new15: Cluster, bad: str, why: str) -> None:
    text = DUMP_8X.replace("REVOKE ALL ON SCHEMA public FROM PUBLIC;\n", bad)
    canary = Path("/tmp/amibake-canary")
    canary.unlink(missing_ok=True)
    with pytest.raises(UserError, match=why):
        db_dump.restore_plain(new15.conn(), lines(text))
    assert not canary.exists()
    assert not new15.sql("SELECT 1 FROM pg_class WHERE relname = 'employees'")


def test_a_plain_dump_is_complete_only_with_its_last_comment() -> None:
    """The backup gate's check of a rollback point from an old host's pg_dump."""
    raw = DUMP_8X.encode()
    assert dump_sql.ends_complete(raw)
    assert dump_sql.ends_complete(raw[-200:])  # what the gate reads: the end
    # pg_dump 15.14+ closes its \restrict fence after the comment
    assert dump_sql.ends_complete(raw + b"\n\\unrestrict k3Y\n\n")
    assert not dump_sql.ends_complete(raw[:raw.index(b"REVOKE ALL")])  # cut short
    assert not dump_sql.ends_complete(b"")
    # the comment as COPY data, or SQL after it: not the end of a dump
    assert not dump_sql.ends_complete(raw + b"INSERT INTO payslips VALUES (3, 3, 'x');\n")
    assert not dump_sql.ends_complete(raw.replace(b"-- PostgreSQL database dump complete",
                                                  b"-- PostgreSQL database dump"))


def test_copy_data_passes_unchanged_even_when_it_looks_like_sql() -> None:
    data = ["COPY t (a) FROM stdin;\n", "\\! not a command inside data\n", "WITH OIDS;\n", "\\.\n"]
    assert list(dump_sql.for_postgresql_15(data, dump_sql.Rewrites())) == data


def test_dump_through_the_old_hosts_own_pg_dump_over_ssh(
    pg10: tuple[Path, Path], pg_template: Path, knot: Knot, sites: tuple[Site, Site],
    sshd: Sshd, secret_env: None, tmp_path: Path,
) -> None:
    """PostgreSQL 10 behind a real sshd: pg_dump and pg_dumpall run "on the
    old host" (over SSH), the password reaches them through stdin into a
    0600 file there, and the plain SQL streams into psql on 15."""
    bin_dir, template = pg10
    old = start_cluster(template, "old10", bin_dir=bin_dir)
    new = start_cluster(pg_template, "new")
    try:
        for c in (old, new):
            c.sql("CREATE DATABASE payroll", dbname="postgres")
        app_schema(old)
        keep = tmp_path / "rollback-point"
        cfg = derive(cutover_manifest(old, new, knot, sites, strategy="dump",
                                      old_pg_dump=f"ssh:{sshd.login}",
                                      old_pg_dump_ssh_options=sshd.options,
                                      rollback_dump=str(keep)))
        state, writer = run_under_writer(cfg, old, new, tmp_path / "s.json")
        assert state.complete
        # the backup gate used the old host's pg_dump too: plain SQL, kept here
        (kept,) = keep.iterdir()
        assert state.facts.rollback_dump == str(kept) and kept.suffix == ".sql"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        text = kept.read_text()
        assert "COPY public.employees" in text and "\temployee 500\t1500\n" in text
        assert dump_sql.ends_complete(kept.read_bytes()[-4096:])
        gate = next(r.detail for r in state.steps if r.name == "backup_old")
        assert f"from {sshd.login}'s own pg_dump" in gate and "completion comment" in gate
        detail = next(r.detail for r in state.steps if r.name == "db_dump_restore")
        assert "the old host's own pg_dump over SSH" in detail
        have = {r[0] for r in new.sql("SELECT n FROM writes")}
        assert writer.acked and not set(writer.acked) - have
        assert writer.refused > 0
        old_sums, new_sums = verify.both(verify.table_checksums, cfg.old, cfg.new)
        assert old_sums["public.employees"] == new_sums["public.employees"]
        assert old_sums["public.payslips"] == new_sums["public.payslips"]
        assert new.sql("SELECT nextval('writes_id_seq')")[0][0] > max(
            r[0] for r in old.sql("SELECT id FROM writes"))
        assert knot.query(f"{SERVER_NAME}.")[0] == (NEW_ADDR,)
        assert new.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [(True,)]
    finally:
        pg.close_sessions()
        destroy_cluster(old)
        destroy_cluster(new)


def test_the_backup_gate_fails_with_the_old_hosts_pg_dump_and_keeps_nothing(
    pg10: tuple[Path, Path], pg_template: Path, knot: Knot, sites: tuple[Site, Site],
    sshd: Sshd, secret_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir, template = pg10
    old = start_cluster(template, "old10", bin_dir=bin_dir)
    new = start_cluster(pg_template, "new")
    try:
        old.sql("CREATE DATABASE payroll", dbname="postgres")
        keep = tmp_path / "rollback-point"
        m = cutover_manifest(old, new, knot, sites, strategy="dump",
                             old_pg_dump=f"ssh:{sshd.login}",
                             old_pg_dump_ssh_options=sshd.options, rollback_dump=str(keep))
        monkeypatch.setenv("AMIBAKE_SECRET_TEST_OLD_DB", "not-the-password")
        state = CutoverState.new("m.yaml", "dump", ["backup_old"])
        with pytest.raises(UserError, match=r"old host's pg_dump failed \(exit 1\): .*"
                                            "password authentication failed"):
            checklist.backup_old(derive(m), state)
        assert list(keep.iterdir()) == [] and not state.facts.rollback_dump
    finally:
        pg.close_sessions()
        destroy_cluster(old)
        destroy_cluster(new)
