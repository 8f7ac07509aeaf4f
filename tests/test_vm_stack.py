"""The local split stack (issue 12): web, app and db as three VMs on one private qemu
network, finding each other by the stack's names. GET / through web → app → db, a POST
read back, then the app VM replaced: web follows its name without being touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.vm.checks import http_get
from builder.wait import NotYet, Waiter, wait_for
from tests.test_boot_launch import _alive, _json

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "manifests" / "smallpayroll.yaml"
HOST = "payroll.example.com"
THROUGH = Waiter("GET / through web → app → db", attempts=600, interval=3, timeout=1200)


def _rows(port: int) -> list[Any]:
    ans = http_get(port, "/employees", host_header=HOST)
    if ans.status != 200:
        raise NotYet(f"GET /employees answered {ans.status}")
    return list(json.loads(ans.body))


def test_split_stack_serves_through_three_vms_and_follows_a_new_app(
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

        def served() -> int:
            ans = http_get(port, "/", host_header=HOST)
            if ans.status != 200:
                raise NotYet(f"GET / answered {ans.status}")
            return ans.status
        wait_for(served, THROUGH, retry_on=(OSError,))
        posted = http_get(port, "/employees", host_header=HOST, method="POST",
                          content_type="application/json",
                          body=json.dumps({"name": "stack-test", "salary": "1.00"}).encode())
        assert posted.status == 201, posted.body[:200]
        assert any(r.get("name") == "stack-test" for r in _rows(port))

        old_app = members["app"]
        replaced = _json(capsys, [*stack, "--replace", "app"])["members"]
        assert not _alive(old_app["qemu_pid"])
        assert replaced["app"]["address"] != old_app["address"]
        assert replaced["app"]["instance_id"] != old_app["instance_id"]

        def follows() -> list[Any]:
            rows = _rows(port)
            if not any(r.get("name") == "stack-test" for r in rows):
                raise NotYet("the row is not there")
            return rows
        wait_for(follows, THROUGH, retry_on=(OSError, ValueError))
        # web was never touched: the same VM, still running
        assert replaced["web"]["instance_id"] == web["instance_id"]
        assert replaced["web"]["qemu_pid"] == web["qemu_pid"] and _alive(web["qemu_pid"])
    finally:
        stopped = _json(capsys, [*stack, "--stop"])
    assert len(stopped["stopped"]) == 3
    assert not any(state.iterdir())
