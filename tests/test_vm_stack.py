"""The local split stack (issue 12) running the seed's Rails sample (issue 13): web, app
and db as three VMs on one private qemu network, finding each other by the stack's
names. GET / rendered by Rails through web → app → db, /health 200 (Rails asks
PostgreSQL), a POST through the CSRF form read back with psql on the db VM; then the
app VM replaced: web follows its name without being touched, and the new app server
finds this release already migrated (the migration ran once, on the first app VM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.manifest import load_manifest
from builder.vm.checks import http_get
from builder.vm.ssh import Ssh, SshKey
from builder.wait import NotYet, Waiter, wait_for
from tests.bake_fixture import SEED_MANIFEST as SEED
from tests.rails_form import new_employee_form, post_employee
from tests.test_boot_launch import _alive, _json

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]

HOST = "payroll.example.com"
LOGIN = load_manifest(SEED).image.login_user
THROUGH = Waiter("GET / through web → app → db", attempts=600, interval=3, timeout=1200)
ROW = "Stack Test Employee"


def _index(port: int) -> bytes:
    """GET / as Rails renders it (its layout's CSRF meta tag, the employees' table)."""
    ans = http_get(port, "/", host_header=HOST, timeout=60)
    if ans.status != 200:
        raise NotYet(f"GET / answered {ans.status}")
    assert b'name="csrf-token"' in ans.body and b"<h1>Employees</h1>" in ans.body, \
        ans.body[:300]
    return ans.body


def _ssh(member: dict[str, Any]) -> Ssh:
    return Ssh(SshKey(Path(member["ssh_key"])), member["ssh_port"], LOGIN)


def _migrate_journal(member: dict[str, Any]) -> str:
    return _ssh(member).output("sudo -n journalctl -b -o cat -u amibake-migrate.service")


def test_split_stack_serves_rails_through_three_vms_and_follows_a_new_app(
    baked_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("AMIBAKE_STATE_DIR", str(state))
    store = str(Path(baked_image.dir).parent.parent)
    stack = ["launch", "--target", "local", "--stack", str(SEED), "--store", store]
    doc = _json(capsys, stack)
    try:
        members = doc["members"]
        assert set(members) == {"web", "app", "db"}
        assert len({m["address"] for m in members.values()}) == 3
        web = members["web"]
        port = web["http_port"]

        # Rails through three VMs: the app VM's migration waited for the db VM, then ran
        wait_for(lambda: _index(port), THROUGH, retry_on=(OSError,))
        assert http_get(port, "/health", host_header=HOST, timeout=60).status == 200
        journal = _migrate_journal(members["app"])
        assert journal.count("running db:migrate") == 1, journal

        # the CSRF form through web → app, the row read back from PostgreSQL on the db VM
        form = new_employee_form(port, HOST)
        posted = post_employee(port, HOST, form, ROW, "12.50")
        assert posted.status in (302, 303), posted.body[:500]
        rows = _ssh(members["db"]).output(
            "sudo -n -u postgres psql -XAtq -d payroll_prod -c "
            "'SELECT name, hourly_rate FROM employees ORDER BY id'")
        assert rows.strip().splitlines() == [f"{ROW}|12.50"]
        assert ROW.encode() in _index(port)

        old_app = members["app"]
        replaced = _json(capsys, [*stack, "--replace", "app"])["members"]
        assert not _alive(old_app["qemu_pid"])
        assert replaced["app"]["address"] != old_app["address"]
        assert replaced["app"]["instance_id"] != old_app["instance_id"]

        def follows() -> bytes:
            page = _index(port)
            if ROW.encode() not in page:
                raise NotYet("the row is not on the page")
            return page
        wait_for(follows, THROUGH, retry_on=(OSError, AssertionError))
        # the same release on a new app server: already migrated, nothing run again
        journal = _migrate_journal(replaced["app"])
        assert "running db:migrate" not in journal, journal
        assert "migration(s) already ran: nothing to do" in journal, journal
        # web was never touched: the same VM, still running
        assert replaced["web"]["instance_id"] == web["instance_id"]
        assert replaced["web"]["qemu_pid"] == web["qemu_pid"] and _alive(web["qemu_pid"])
    finally:
        stopped = _json(capsys, [*stack, "--stop"])
    assert len(stopped["stopped"]) == 3
    assert not any(state.iterdir())
