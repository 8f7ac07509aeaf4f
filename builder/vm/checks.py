"""What a booted instance must show for its role (issue #3 part 5).

Every check runs from the host: commands over SSH as the login user, HTTP
through the forwarded port. The role's expectations come from the manifest
(which components the role runs) and from the instance's own
/etc/amibake/roles.json (which services belong to which role).

What "HTTP 200" means per role:
- a role running nginx AND the app servers nginx proxies to (all-in-one):
  `GET /` and `GET /health` answer 200 through nginx → app servers →
  PostgreSQL (the sample app's `/` lists employees from the database);
- a role running nginx without the app servers (the split `web` role): its
  upstream lives on other instances, which a lone boot test does not have.
  nginx must serve a static page from the static root with 200 (the error
  page `/404.html`, or the first configured error page) and answer the app
  path `/health` with 502 or 504 (nginx up, upstream unreachable) — never a
  refused connection or a 200 from nowhere;
- with the maintenance flag present every nginx role answers 503 with
  `Retry-After`, and the previous status returns once the flag is removed.
"""

from __future__ import annotations

import http.client
import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from builder.manifest.model import Manifest
from builder.vm.ssh import Ssh, SshFailed
from builder.wait import NotYet, Waiter, WaitTimeout, wait_for


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def http_get(port: int, path: str, *, host_header: str = "", timeout: float = 20,
             method: str = "GET", body: bytes | None = None,
             content_type: str = "", headers: Mapping[str, str] | None = None) -> HttpAnswer:
    """GET (or `method`) http://127.0.0.1:port/path, with `headers` added (e.g. a
    Cookie); OSError when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = dict(headers or {})
        if host_header:
            headers["Host"] = host_header
        if content_type:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return HttpAnswer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    except http.client.HTTPException as exc:  # e.g. RemoteDisconnected before nginx is up
        raise OSError(f"bad HTTP answer: {exc!r}") from exc
    finally:
        conn.close()


@dataclass(frozen=True)
class RoleExpectations:
    """What to expect of an instance in `role`, from the manifest alone."""

    role: str
    nginx: bool
    full_chain: bool  # nginx → app servers → PostgreSQL all on this instance
    postgresql: bool
    server_name: str
    maintenance_flag: str
    retry_after: int
    static_page: str
    mount_point: str
    app_ports: tuple[int, ...] = ()
    #: the team's own app (not the sample): its pages are its own, so the
    #: generic check asks only `/` and `/health`, not the sample's JSON API
    own_app: bool = False
    #: the team's own app's servers without a database on the instance, booted
    #: alone: amibake-migrate waits for the database (the boot does not finish)
    #: and the app servers, which Require it, stay down
    migration_waits: bool = False


def expectations_for(manifest: Manifest, role: str) -> RoleExpectations:
    """What an instance of `role` booted alone (no other role reachable) shows."""
    comps = set(manifest.roles[role].components)
    own_app = manifest.app.code not in ("sample", "none")
    nginx = manifest.components.nginx
    pg = manifest.components.postgresql
    has_nginx = "nginx" in comps and nginx is not None
    pages = sorted((nginx.error_pages if nginx else {}).values())
    static_page = "/404.html" if "/404.html" in pages else (pages[0] if pages else "/404.html")
    return RoleExpectations(
        role=role,
        nginx=has_nginx,
        full_chain=has_nginx and "appserver" in comps and "postgresql" in comps,
        postgresql="postgresql" in comps and pg is not None,
        server_name=manifest.app.server_name,
        maintenance_flag=nginx.maintenance_flag if nginx else "",
        retry_after=nginx.retry_after if nginx else 0,
        static_page=static_page,
        mount_point=pg.mount_point if pg else "/mnt",
        app_ports=manifest.components.appserver.ports
        if "appserver" in comps and manifest.components.appserver else (),
        own_app=own_app,
        migration_waits=own_app and "appserver" in comps and "postgresql" not in comps
        and manifest.components.appserver is not None,
    )


def expected_services(roles_json: dict[str, Any], role: str) -> tuple[set[str], set[str]]:
    """(services that must be active, services that must not) for `role`."""
    roles = roles_json.get("roles")
    if not isinstance(roles, dict) or role not in roles:
        raise ValueError(f"/etc/amibake/roles.json has no role {role!r}")
    mine = set(roles[role].get("services", []))
    every = set(roles_json.get("all_services", []))
    for other in roles.values():
        every |= set(other.get("services", []))
    return mine, every - mine


class RoleChecker:
    """Runs the checks for one role on one booted instance."""

    def __init__(self, expect: RoleExpectations, ssh: Ssh, http_port: int,
                 http_waiter: Callable[[str], Waiter]) -> None:
        self.expect = expect
        self.ssh = ssh
        self.http_port = http_port
        self.http_waiter = http_waiter

    def run_all(self) -> list[CheckResult]:
        if self.expect.migration_waits:
            return [self._guard("role being applied", self.check_dispatcher_waits),
                    self._guard("cloud-init config valid, sudo quiet",
                                self.check_instance_basics),
                    self._guard("migration waits for the database",
                                self.check_migration_waits),
                    self._guard("app servers down", self.check_app_servers_down)]
        results = [self._guard("role applied", self.check_role_marker),
                   self._guard("services", self.check_services),
                   self._guard("cloud-init config valid, sudo quiet", self.check_instance_basics)]
        if self.expect.app_ports:
            results.append(self._guard("app servers listening", self.check_app_ports))
        if self.expect.postgresql:
            results.append(self._guard("postgresql data on instance storage",
                                       self.check_postgres_on_instance_store))
        if self.expect.nginx:
            results.append(self._guard("http", self.check_http))
            results.append(self._guard("maintenance 503", self.check_maintenance))
        return results

    @staticmethod
    def _guard(name: str, check: Callable[[], str]) -> CheckResult:
        try:
            return CheckResult(name, True, check())
        except (CheckFailed, SshFailed, OSError, WaitTimeout) as exc:
            return CheckResult(name, False, str(exc))

    # ------------------------------------------------------------- checks
    def check_role_marker(self) -> str:
        got = self.ssh.output("cat /var/lib/amibake/role").strip()
        if got != self.expect.role:
            raise CheckFailed(f"/var/lib/amibake/role says {got!r}, expected {self.expect.role!r}")
        return f"/var/lib/amibake/role = {got}"

    def check_services(self) -> str:
        roles_json = json.loads(self.ssh.output("cat /etc/amibake/roles.json"))
        active, inactive = expected_services(roles_json, self.expect.role)
        names = sorted(active | inactive)
        script = "; ".join(
            f"printf '%s %s\\n' {shlex.quote(n)} \"$(systemctl is-active {shlex.quote(n)})\""
            for n in names
        )
        states = dict(line.split(" ", 1) for line in self.ssh.output(script).splitlines() if line)
        wrong = [f"{n} is {states.get(n, '?')} (want active)" for n in sorted(active)
                 if states.get(n) != "active"]
        wrong += [f"{n} is {states.get(n, '?')} (belongs to another role)"
                  for n in sorted(inactive) if states.get(n) in ("active", "activating")]
        if wrong:
            raise CheckFailed("; ".join(wrong))
        return f"active: {', '.join(sorted(active)) or 'none'}; inactive: " \
               f"{', '.join(sorted(inactive)) or 'none'}"

    def check_instance_basics(self) -> str:
        """cloud-init accepted every cloud-config (the image's cloud.cfg.d too)
        and the instance resolves its own hostname (sudo warns otherwise)."""
        invalid = self.ssh.output(  # grep: 1 = no match, 2 = could not read
            "sudo -n grep -h 'Invalid cloud-config' /var/log/cloud-init.log; [ $? -le 1 ]").strip()
        if invalid:
            raise CheckFailed(f"cloud-init: {invalid.splitlines()[0]}")
        noise = self.ssh.output("sudo -n true 2>&1").strip()
        if noise:
            raise CheckFailed(f"sudo printed: {noise}")
        return "no schema warning in /var/log/cloud-init.log; sudo -n true is silent"

    def check_app_ports(self) -> str:
        def listening() -> str:
            closed = []
            for port in self.expect.app_ports:
                probe = f"timeout 5 bash -c '</dev/tcp/127.0.0.1/{port}'"
                if self.ssh.run(probe).returncode != 0:
                    closed.append(port)
            if closed:
                raise NotYet(f"nothing listens on port(s) {closed}")
            return "listening on " + ", ".join(map(str, self.expect.app_ports))
        return wait_for(listening, self.http_waiter("app servers to listen"))

    def check_dispatcher_waits(self) -> str:
        """The dispatcher is still starting the role's services (it waits for the app
        servers, which wait for the migration); the role is not marked applied."""
        state = self.ssh.run("systemctl is-active amibake-dispatch.service").stdout.strip()
        marker = self.ssh.run("test -e /var/lib/amibake/role").returncode == 0
        if state != "activating" or marker:
            raise CheckFailed(f"amibake-dispatch.service is {state}"
                              f"{' and /var/lib/amibake/role exists' if marker else ''}, "
                              "expected activating (waiting for the app servers)")
        return "amibake-dispatch.service activating; /var/lib/amibake/role not written yet"

    def check_migration_waits(self) -> str:
        """amibake-migrate.service is activating and has said, once, what it waits for."""
        def waiting() -> str:
            state = self.ssh.run("systemctl is-active amibake-migrate.service").stdout.strip()
            said = [line for line in self.ssh.output(
                "sudo -n journalctl -b -o cat -u amibake-migrate.service").splitlines()
                if line.startswith("amibake-migrate: ")]
            if state != "activating" or not said:
                raise NotYet(f"amibake-migrate.service is {state}: {said[-1:] or 'nothing said'}")
            if not said[0].startswith("amibake-migrate: waiting for the database (") or \
                    len(said) != 1:
                raise CheckFailed(f"amibake-migrate said {said!r}")
            return f"amibake-migrate.service activating, journal: {said[0]}"
        return wait_for(waiting, self.http_waiter("amibake-migrate to wait for the database"))

    def check_app_servers_down(self) -> str:
        units = [f"amibake-app@{port}.service" for port in self.expect.app_ports]
        states = self.ssh.output(f"systemctl is-active {' '.join(units)}; true").split()
        up = [f"{u} is {s}" for u, s in zip(units, states, strict=True) if s != "inactive"]
        listening = [port for port in self.expect.app_ports if self.ssh.run(
            f"timeout 5 bash -c '</dev/tcp/127.0.0.1/{port}'").returncode == 0]
        if up or listening:
            raise CheckFailed("; ".join(up + [f"port {p} listens" for p in listening]))
        return (f"{', '.join(units)} inactive (Require amibake-migrate); nothing listens on "
                f"{', '.join(map(str, self.expect.app_ports))}")

    def check_postgres_on_instance_store(self) -> str:
        mp = self.expect.mount_point
        mount = self.ssh.output(f"findmnt -n -o SOURCE,FSTYPE {shlex.quote(mp)} || true").strip()
        root = self.ssh.output("findmnt -n -o SOURCE /").strip()
        if not mount:
            raise CheckFailed(f"nothing is mounted on {mp}")
        if mount.split()[0] == root:
            raise CheckFailed(f"{mp} is on the root device {root}")
        data_dir = self.ssh.output(
            "sudo -n -u postgres psql -XAtc 'SHOW data_directory'").strip()
        if not (data_dir + "/").startswith(mp.rstrip("/") + "/"):
            raise CheckFailed(f"PostgreSQL data_directory is {data_dir}, not under {mp}")
        return f"{mp} is {mount}; data_directory = {data_dir}"

    def _get(self, path: str, timeout: float = 20) -> HttpAnswer:
        return http_get(self.http_port, path, host_header=self.expect.server_name, timeout=timeout)

    def _wait_status(self, path: str, statuses: set[int], timeout: float = 20) -> HttpAnswer:
        def attempt() -> HttpAnswer:
            ans = self._get(path, timeout)
            if ans.status not in statuses:
                raise NotYet(f"GET {path} answered {ans.status}")
            return ans
        return wait_for(attempt, self.http_waiter(f"GET {path} → {sorted(statuses)}"),
                        retry_on=(OSError,))

    def expected_normal(self) -> list[tuple[str, set[int]]]:
        if self.expect.full_chain and self.expect.own_app:
            return [("/", {200}), ("/health", {200})]
        if self.expect.full_chain:
            return [("/", {200}), ("/health", {200}), ("/employees", {200})]
        return [(self.expect.static_page, {200}), ("/health", {502, 504})]

    def check_http(self) -> str:
        seen = []
        for path, statuses in self.expected_normal():
            ans = self._wait_status(path, statuses, timeout=70)
            seen.append(f"GET {path} {ans.status}")
        if self.expect.full_chain and not self.expect.own_app:
            name = f"boot-test-{self.expect.role}"
            posted = http_get(self.http_port, "/employees", host_header=self.expect.server_name,
                              method="POST", content_type="application/json",
                              body=json.dumps({"name": name, "salary": "1.00"}).encode())
            if posted.status != 201:
                raise CheckFailed(f"POST /employees answered {posted.status}: "
                                  f"{posted.body[:200]!r}")
            ans = self._get("/employees")
            if "nginx" not in ans.headers.get("server", ""):
                raise CheckFailed(f"GET /employees was not answered through nginx "
                                  f"(Server: {ans.headers.get('server')!r})")
            try:
                rows = json.loads(ans.body)
            except ValueError as exc:
                raise CheckFailed(f"GET /employees is not JSON: {ans.body[:200]!r}") from exc
            if not any(isinstance(r, dict) and r.get("name") == name for r in rows):
                raise CheckFailed(f"the row POSTed ({name}) is not in GET /employees")
            seen.append("POST then GET /employees: the row round-trips through PostgreSQL")
        return ", ".join(seen)

    def check_maintenance(self) -> str:
        flag = shlex.quote(self.expect.maintenance_flag)
        self.ssh.output(f"sudo -n mkdir -p \"$(dirname {flag})\" && sudo -n touch {flag}")
        try:
            ans = self._get("/")
            if ans.status != 503:
                raise CheckFailed(f"with {self.expect.maintenance_flag} present GET / answered "
                                  f"{ans.status}, expected 503")
            retry = ans.headers.get("retry-after")
            if retry != str(self.expect.retry_after):
                raise CheckFailed(f"503 carries Retry-After {retry!r}, "
                                  f"expected {self.expect.retry_after}")
        finally:
            self.ssh.output(f"sudo -n rm -f {flag}")
        path, statuses = self.expected_normal()[0]
        back = self._wait_status(path, statuses, timeout=70)
        return f"503 with Retry-After {retry}; after removing the flag GET {path} {back.status}"


class CheckFailed(Exception):
    """One check's expectation did not hold."""
