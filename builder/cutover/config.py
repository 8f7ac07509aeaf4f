"""Derived cutover configuration: the manifest's `cutover` section with its
secrets resolved and defaults filled in from the rest of the manifest.

Secrets are references (`{ssm: NAME}` / `{secretsmanager: NAME}`), resolved
here and never written anywhere. For a local run, the environment variable
`AMIBAKE_SECRET_<NAME>` overrides the store, where <NAME> is the secret's
name upper-cased with every run of non-alphanumerics turned into `_`
(`/smallpayroll/db-password` → `AMIBAKE_SECRET_SMALLPAYROLL_DB_PASSWORD`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from builder.errors import UserError
from builder.manifest.checks import cutover_problems
from builder.manifest.model import Cutover, DbEndpoint, Manifest, Nginx
from builder.secret_values import resolve_secret


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Conn:
    """A resolved PostgreSQL connection."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = None

    def env(self) -> dict[str, str]:
        """libpq environment for psql / pg_dump / pg_restore: never the
        password (other users may read a process's environment); that goes
        through a private passfile (builder.cutover.pg.passfile)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
            "PGCONNECT_TIMEOUT": "5",
            "PGAPPNAME": "amibake-cutover",
        }

    def conninfo(self, *, with_password: bool = True) -> str:
        parts = [
            f"host={_libpq_quote(self.host)}",
            f"port={self.port}",
            f"dbname={_libpq_quote(self.dbname)}",
            f"user={_libpq_quote(self.user)}",
        ]
        if with_password and self.password is not None:
            parts.append(f"password={_libpq_quote(self.password)}")
        return " ".join(parts)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str


@dataclass(frozen=True)
class CutoverConfig:
    """Everything a cutover step needs, typed and resolved."""

    manifest: Manifest
    cutover: Cutover
    old: Conn
    new: Conn
    publisher: Conn  # the old database as the new server reaches it
    app_user: str
    server_name: str
    nginx: Nginx
    tsig: TsigKey | None
    #: cutover.form_smoke.secret_fields, resolved
    form_secrets: Mapping[str, str] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        return self.cutover.strategy


def _conn(ep: DbEndpoint, secrets: dict[str, Any]) -> Conn:
    password = resolve_secret(ep.password, **secrets) if ep.password else None
    return Conn(ep.host, ep.port, ep.dbname, ep.user, password)


def parse_tsig(value: str) -> TsigKey:
    parts = value.strip().split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise UserError(
            "the TSIG key secret is not `name:algorithm:secret`",
            hint="e.g. amibake.:hmac-sha256:<base64>",
        )
    return TsigKey(parts[0], parts[1], parts[2])


def with_new_address(manifest: Manifest, address: str, source: str) -> Manifest:
    """The manifest with `cutover.dns.new_address` taken from `source` (e.g. the
    stack's SiteAddress), checked as the loader checks the manifest's own value."""
    from dataclasses import replace

    from builder.manifest.checks import check_site_address
    from builder.manifest.field_checks import site_address

    cut = manifest.cutover
    if cut is None:
        return manifest
    dns = replace(cut.dns, new_address=address)
    problems = [p for p in [site_address(address)] if p]
    check_site_address(dns, lambda _path, message: problems.append(message))
    if problems:
        raise UserError(f"{source} {address!r}: {problems[0]}",
                        hint="the cutover cannot point the site's record at it")
    return replace(manifest, cutover=replace(cut, dns=dns))


def derive(
    manifest: Manifest,
    *,
    ssm: Any = None,
    secretsmanager: Any = None,
    environ: Mapping[str, str] | None = None,
) -> CutoverConfig:
    """Check what the cutover needs beyond the loader's checks, resolve secrets."""
    cut = manifest.cutover
    if cut is None:
        raise UserError(
            f"{manifest.where('cutover')}: the manifest has no `cutover` section",
            hint="add one: old_db, new_db, dns, notice, window_start, old_site, new_site",
        )
    nginx = manifest.components.nginx
    # The loader has checked all of this; a manifest made in code gets the same checks.
    problems = cutover_problems(manifest)
    if problems or nginx is None:
        path, message = problems[0] if problems else ("components", "no components.nginx")
        raise UserError(f"{manifest.where(path)}: {message}",
                        hint="`amibake validate` lists every problem of the manifest")
    dns = cut.dns
    secrets: dict[str, Any] = {"ssm": ssm, "secretsmanager": secretsmanager, "environ": environ}
    old = _conn(cut.old_db, secrets)
    new = _conn(cut.new_db, secrets)
    publisher = old
    if cut.publisher:
        host, _, port = cut.publisher.rpartition(":") if ":" in cut.publisher else (
            cut.publisher, "", str(old.port))  # host[:port], checked at load
        publisher = Conn(host, int(port), old.dbname, old.user, old.password)
    tsig = parse_tsig(resolve_secret(dns.tsig_key, **secrets)) if dns.tsig_key else None
    app_user = manifest.app.database.user
    form_secrets = {name: resolve_secret(ref, **secrets) for name, ref in
                    (cut.form_smoke.secret_fields.items() if cut.form_smoke else ())}
    return CutoverConfig(
        manifest=manifest,
        cutover=cut,
        old=old,
        new=new,
        publisher=publisher,
        app_user=app_user,
        server_name=manifest.app.server_name,
        nginx=nginx,
        tsig=tsig,
        form_secrets=form_secrets,
    )
