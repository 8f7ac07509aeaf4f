"""A plain-SQL dump made by an old server's own pg_dump (PostgreSQL 8.1-9.1),
made fit for PostgreSQL 15 line by line as it streams past, never held whole.

The dump is read back from the old server, so it is not trusted: outside
COPY data no psql meta-command passes (`\\!` would run a shell command on
this machine; only the `\\restrict` fence newer pg_dumps write, which makes
psql refuse the rest), and the data lines of a COPY block pass unchanged up to its
`\\.`. What PostgreSQL 15 no longer reads is rewritten, and counted:

- tables WITH OIDS (`SET default_with_oids = true`, `WITH OIDS`,
  `WITH (OIDS=TRUE)`): created without the hidden oid column (12+ has none);
- `CREATE [TRUSTED] [PROCEDURAL] LANGUAGE plpgsql`: plpgsql is an extension
  installed in every database since 9.0 (`CREATE EXTENSION IF NOT EXISTS`).

Strings need nothing: the dump says `SET standard_conforming_strings = off`
(or writes E'' literals) itself, and PostgreSQL 15 still reads that setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from builder.errors import UserError

_COPY = re.compile(r"^COPY .+ FROM stdin;$")
_WITH_OIDS_SET = re.compile(r"^SET default_with_oids = (true|on|1);$", re.IGNORECASE)
#: the end of a CREATE TABLE as pg_dump writes it: `) WITH OIDS;`, `WITH (OIDS=TRUE);` …
_OIDS_CLAUSE = re.compile(
    r"^(\)?)\s*(?:WITH(?P<on>OUT)?\s+OIDS|WITH\s*\(\s*oids\s*=\s*(?P<v>\w+)\s*\))\s*;$",
    re.IGNORECASE)
#: pg_dump 15.14+/17.6+ fences its output with these (psql then refuses every
#: other meta-command in between): kept, they only make psql stricter
_RESTRICT = re.compile(r"^\\(un)?restrict [A-Za-z0-9]+$")
_FUNCTION = re.compile(r"^CREATE (OR REPLACE )?FUNCTION ", re.IGNORECASE)
_FUNCTION_END = re.compile(r"\bLANGUAGE \w+;$", re.IGNORECASE)
_LANGUAGE = re.compile(r"^CREATE (TRUSTED )?(PROCEDURAL )?LANGUAGE plpgsql;$", re.IGNORECASE)


#: the last comment pg_dump -Fp writes (every version from 8.x on): a dump
#: without it was cut short
COMPLETE = "-- PostgreSQL database dump complete"


def ends_complete(tail: bytes) -> bool:
    """Does a plain dump's end (its last few KiB) hold pg_dump's completion
    comment, followed only by comment, blank and `\\unrestrict` lines?"""
    text = tail.decode("latin-1")
    at = text.rfind("\n" + COMPLETE + "\n")
    if at < 0:
        return False
    rest = text[at + len(COMPLETE) + 2:].splitlines()
    return all(ln.strip() in ("", "--") or _RESTRICT.match(ln.strip()) for ln in rest)


@dataclass
class Rewrites:
    """What was changed on the way, for the step's report."""

    lines: int = 0
    copy_rows: int = 0
    oids_dropped: int = 0
    languages: int = 0
    #: functions whose body holds a backslash: their string literals are
    #: read by the new server's standard_conforming_strings when they run
    backslash_functions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.lines} line(s), {self.copy_rows} COPY row(s)"]
        if self.oids_dropped:
            parts.append(f"{self.oids_dropped} WITH OIDS table setting(s) dropped "
                         "(PostgreSQL 12+ has no oid column)")
        if self.languages:
            parts.append("plpgsql as the built-in extension")
        if self.backslash_functions:
            parts.append(
                f"check {len(self.backslash_functions)} function(s) with backslashes in their "
                "body, now read with standard_conforming_strings on: "
                + ", ".join(self.backslash_functions[:5]))
        return "; ".join(parts)


def for_postgresql_15(lines: Iterable[str], rewrites: Rewrites) -> Iterator[str]:
    """The dump's lines (each ending in a newline), rewritten; UserError on a
    psql meta-command outside COPY data, or a COPY block left open."""
    in_copy = False
    function = ""  # the CREATE FUNCTION being read, up to its LANGUAGE …;
    backslash = False
    for number, line in enumerate(lines, 1):
        rewrites.lines = number
        if in_copy:
            if line.rstrip("\r\n") == "\\.":
                in_copy = False
            else:
                rewrites.copy_rows += 1
            yield line
            continue
        text = line.rstrip("\r\n")
        start = _FUNCTION.match(text)
        if start and not function:
            function, backslash = text[start.end():].split("(")[0] or "?", False
        if function:
            backslash = backslash or "\\" in text
            if _FUNCTION_END.search(text):
                if backslash:
                    rewrites.backslash_functions.append(function)
                function = ""
        if text.startswith("\\") and not _RESTRICT.match(text):
            raise UserError(
                f"the old server's dump, line {number}: a psql meta-command "
                f"({text[:40]!r}) outside COPY data is refused",
                hint="pg_dump -Fp of one database writes none; check the old host's pg_dump")
        if _COPY.match(text):
            in_copy = True
        elif _WITH_OIDS_SET.match(text):
            rewrites.oids_dropped += 1
            line = "SET default_with_oids = false;\n"
        elif _LANGUAGE.match(text):
            rewrites.languages += 1
            line = "CREATE EXTENSION IF NOT EXISTS plpgsql;\n"
        elif m := _OIDS_CLAUSE.match(text):
            if not m.group("on") and (m.group("v") or "true").lower() in ("true", "on", "1"):
                rewrites.oids_dropped += 1
            line = m.group(1) + ";\n"
        yield line
    if in_copy:
        raise UserError(f"the old server's dump ends inside COPY data (line {rewrites.lines})",
                        hint="the dump was cut short: check the old host's pg_dump and disk")
