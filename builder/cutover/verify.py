"""Verification gates before DNS moves: row counts, sequence values, ordered
content checksums, files, and smoke tests of the new site under its real
host name without touching DNS (connect to the new address, send the Host
header / SNI of the real name — the seed's hosts-file override)."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg

from builder.cutover import pg
from builder.cutover.config import Conn
from builder.errors import UserError

T = TypeVar("T")

_USER_TABLES = """
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE {kinds} AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1"""


def _user_tables(version_num: int) -> str:
    """The user tables' names, in SQL every server since 8.1 reads (temporary
    tables live in pg_temp_N schemas); partitions count with their parent
    (partitioned tables and relispartition are PostgreSQL 10+)."""
    kinds = ("c.relkind IN ('r', 'p') AND NOT c.relispartition" if version_num >= 100000
             else "c.relkind = 'r'")
    return _USER_TABLES.format(kinds=kinds)


Query = Callable[[str], list[list[str]]]


def tables(conn: Conn, query: Query | None = None) -> list[str]:
    run = query or (lambda sql: pg.query(conn, sql))
    return [r[0] for r in run(_user_tables(pg.version_num(conn)))]


def row_counts(conn: Conn, snapshot: Snapshot | None = None) -> dict[str, int]:
    """Per table: its row count; inside `snapshot` when given."""
    query: Query = snapshot.query if snapshot else (lambda sql: pg.query(conn, sql, timeout=3600))
    names = tables(conn, query)
    if not names:
        return {}
    sql = " UNION ALL ".join(
        f"SELECT {pg.literal(conn, t)}, count(*) FROM {t}" for t in names)
    return {t: int(n) for t, n in query(sql)}


def sequences(conn: Conn) -> dict[str, int | None]:
    rows = pg.query(conn, "SELECT schemaname || '.' || sequencename, last_value "
                          "FROM pg_sequences ORDER BY 1")
    return {n: int(v) if v else None for n, v in rows}


def _order_by(conn: Conn, query: Query, table: str) -> str:
    """The primary key's columns in key order (SQL every server since 8.1 reads)."""
    cols = query(f"""
        SELECT quote_ident(a.attname) FROM (
          SELECT i.indrelid, i.indkey, generate_series(0, i.indnatts - 1) AS k FROM pg_index i
           WHERE i.indrelid = {pg.literal(conn, table)}::regclass AND i.indisprimary) p
          JOIN pg_attribute a ON a.attrelid = p.indrelid AND a.attnum = p.indkey[p.k]
         ORDER BY p.k""")
    return ", ".join("t." + c[0] for c in cols) or "t::text"


def _checksum_sql(version_num: int, table: str, order: str) -> str:
    """md5 over the rows' md5s in `order`: string_agg … ORDER BY is 9.0+;
    before, an ARRAY of the ordered rows joined."""
    if version_num >= 90000:
        return (f"SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) "
                f"FROM {table} t")
    return (f"SELECT md5(array_to_string(ARRAY(SELECT md5(t::text) FROM {table} t "
            f"ORDER BY {order}), ''))")


def table_checksums(conn: Conn, snapshot: Snapshot | None = None) -> dict[str, str]:
    """Per table: md5 over the md5 of each row in primary-key order; inside
    `snapshot` when given (the new server as it was before the DNS switch)."""
    query: Query = snapshot.query if snapshot else (
        lambda sql: pg.query(conn, sql, timeout=24 * 3600))
    out: dict[str, str] = {}
    version = pg.version_num(conn)
    for t in tables(conn, query):
        out[t] = query(_checksum_sql(version, t, _order_by(conn, query, t)))[0][0]
    return out


class Snapshot:
    """A REPEATABLE READ transaction opened on the new server before the DNS
    switch and held: checksums taken after the switch see the data as it was
    then, not the app's first writes. Lives only as long as this run."""

    def __init__(self, conn: Conn, *, session: psycopg.Connection[Any] | None = None) -> None:
        """`session`: a connection to `conn` opened ahead (`connect`), so
        that taking the snapshot costs no connection set-up."""
        self._conn = session or Snapshot.connect(conn)
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._conn.execute("SELECT 1")  # the snapshot is taken here

    @staticmethod
    def connect(conn: Conn) -> psycopg.Connection[Any]:
        return psycopg.connect(conn.conninfo(), autocommit=True,
                               application_name="amibake-cutover")

    def query(self, sql: str) -> list[list[str]]:
        cur = self._conn.execute(sql.encode())
        return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class Comparison:
    what: str
    differences: tuple[str, ...]
    compared: int

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.ok:
            return f"{self.what}: {self.compared} equal"
        return f"{self.what}: {len(self.differences)} differ: " + "; ".join(self.differences[:5])


def compare(what: str, old: Mapping[str, object], new: Mapping[str, object]) -> Comparison:
    diffs = [f"{k}: old {old.get(k, 'missing')} new {new.get(k, 'missing')}"
             for k in sorted(set(old) | set(new)) if old.get(k, "missing") != new.get(k, "missing")]
    return Comparison(what, tuple(diffs), len(set(old) | set(new)))


def both(fn: Callable[[Conn], T], old: Conn, new: Conn) -> tuple[T, T]:
    """Run `fn` on both servers at once (the gates sit inside the window)."""
    with ThreadPoolExecutor(2) as pool:
        on_old = pool.submit(fn, old)
        on_new = pool.submit(fn, new)
        return on_old.result(), on_new.result()


# ------------------------------------------------------------------ smoke


@dataclass(frozen=True)
class SmokeResult:
    path: str
    status: int
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def connection(url: str, host_name: str, *, address: str | None = None,
               timeout: float = 10.0) -> http.client.HTTPConnection:
    """A connection to `url`'s port at `address` (curl --resolve): TLS with SNI
    and certificate checks for `host_name` when the URL is https."""
    parts = urlsplit(url)
    address = address or parts.hostname or "127.0.0.1"
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    if https:
        return _PinnedHTTPS(address, port, host_name, timeout)
    return http.client.HTTPConnection(address, port, timeout=timeout)


def fetch(
    url: str, path: str, host_name: str, *, address: str | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """GET `path` from `url` with its host name forced to resolve to `address`
    (curl --resolve): the request carries Host (and SNI) `host_name`."""
    conn = connection(url, host_name, address=address, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host_name, "User-Agent": "amibake-cutover"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to a fixed address, with SNI and certificate checks for the real name."""

    def __init__(self, address: str, port: int, host_name: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=ssl.create_default_context())
        self._real_name = host_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._real_name)  # type: ignore[attr-defined]


def smoke(url: str, host_name: str, paths: tuple[str, ...], *,
          address: str | None = None) -> list[SmokeResult]:
    out: list[SmokeResult] = []
    for path in paths:
        try:
            status, headers, _ = fetch(url, path, host_name, address=address)
            out.append(SmokeResult(path, status, headers.get("server", "")))
        except (OSError, http.client.HTTPException) as exc:
            out.append(SmokeResult(path, 0, str(exc)))
    return out


def require_smoke(results: list[SmokeResult], url: str, host_name: str) -> str:
    bad = [r for r in results if not r.ok]
    if bad:
        raise UserError(
            f"smoke test of {url} as {host_name} failed: "
            + ", ".join(f"{r.path} → {r.status or r.detail}" for r in bad),
            hint="fix the new site (DNS was not touched), then run again; or `cutover rollback`",
        )
    return f"{len(results)} path(s) answered 200 as {host_name}"
