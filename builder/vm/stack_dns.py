"""The private zone of a local stack: Knot answering `<role>.<stack>.internal`, as the
stack's Route 53 private zone does on AWS, on 127.0.0.1 (a VM reaches it through its
user network's gateway). A replaced instance's name moves by an RFC 2136 update signed
with the stack's own TSIG key."""

from __future__ import annotations

import base64
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.ports import free_port
from builder.proc import run
from builder.wait import NotYet, Waiter, wait_for

TTL = 5
KEY_NAME = "amibake-stack."
KEY_ALGORITHM = "hmac-sha256"
STARTED = Waiter("the stack's DNS (knotd) to answer", attempts=200, interval=0.05, timeout=30,
                 hint="see knot.log in the stack's state directory")


@dataclass(frozen=True)
class StackDns:
    """A running knotd serving `zone` (no trailing dot) on 127.0.0.1:`port`."""

    dir: Path
    zone: str
    port: int
    secret: str

    def _update(self) -> object:
        import dns.tsigkeyring
        import dns.update

        ring = dns.tsigkeyring.from_text({KEY_NAME: (KEY_ALGORITHM, self.secret)})
        return dns.update.Update(self.zone + ".", keyring=ring, keyalgorithm=KEY_ALGORITHM)

    def set(self, label: str, address: str) -> None:
        """`label.zone` A `address` (replacing what it was)."""
        import dns.query
        import dns.rcode

        update = self._update()
        update.replace(label, TTL, "A", address)  # type: ignore[attr-defined]
        answer = dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=5)  # type: ignore[arg-type]
        if answer.rcode() != dns.rcode.NOERROR:
            raise UserError(f"the stack's DNS refused to set {label}.{self.zone}: "
                            f"{dns.rcode.to_text(answer.rcode())}")

    def lookup(self, label: str) -> tuple[str, ...]:
        import dns.message
        import dns.query
        import dns.rdatatype

        query = dns.message.make_query(f"{label}.{self.zone}.", dns.rdatatype.A)
        answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
        return tuple(sorted(r.address for rr in answer.answer for r in rr
                            if rr.rdtype == dns.rdatatype.A))

    def pid(self) -> int | None:
        try:
            return int((self.dir / "knot.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            if b"knotd" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return  # not ours (any more)
            import os

            os.kill(pid, signal.SIGTERM)
        except OSError:
            return


def start_dns(directory: Path, zone: str, records: dict[str, str]) -> StackDns:
    """knotd for `zone` with `records` (label → IPv4) in `directory` (created here)."""
    directory.mkdir(mode=0o700)
    port = free_port()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    lines = [f"$ORIGIN {zone}.", f"$TTL {TTL}",
             "@ SOA ns hostmaster 1 3600 600 86400 5", "@ NS ns", "ns A 127.0.0.1",
             *(f"{label} A {address}" for label, address in sorted(records.items()))]
    (directory / f"{zone}.zone").write_text("\n".join(lines) + "\n")
    (directory / "knot.conf").write_text(f"""server:
    rundir: "{directory}"
    listen: 127.0.0.1@{port}
database:
    storage: "{directory}/db"
log:
  - target: "{directory}/knot.log"
    any: info
key:
  - id: {KEY_NAME}
    algorithm: {KEY_ALGORITHM}
    secret: {secret}
acl:
  - id: update
    key: {KEY_NAME}
    action: update
template:
  - id: default
    storage: "{directory}"
    file: "%s.zone"
zone:
  - domain: {zone}.
    acl: update
""")
    (directory / "db").mkdir()
    dns_ = StackDns(directory, zone, port, secret)
    run(["knotd", "-d", "-c", str(directory / "knot.conf")])

    def answers() -> None:
        try:
            if not dns_.lookup("ns"):
                raise NotYet("no answer yet")
        except OSError as exc:
            raise NotYet(str(exc)) from exc
        except Exception as exc:  # dnspython's timeout
            raise NotYet(repr(exc)) from exc
    try:
        wait_for(answers, STARTED)
    except BaseException:
        dns_.stop()
        raise
    return dns_
