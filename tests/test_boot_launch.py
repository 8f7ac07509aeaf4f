"""Local launch: `amibake launch --target local`, `instances list`, `instances stop`.

A real VM from the session's baked image, in the background under its own
supervisor process; the test reaches nginx through the forwarded port, then
stops the instance and checks that no process and no state is left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from builder.vm.checks import http_get
from builder.wait import NotYet, Waiter, wait_for

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(["--json", *argv]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_launch_list_stop_a_local_instance(
    baked_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("AMIBAKE_STATE_DIR", str(state))
    store_root = Path(baked_image.dir).parent.parent
    launched = _json(capsys, ["launch", "--target", "local", "web",
                              "--manifest", str(ROOT / "manifests/smallpayroll.yaml"),
                              "--store", str(store_root)])
    iid = launched["instance_id"]
    try:
        assert launched["role"] == "web" and launched["state"] == "running"
        assert _alive(launched["qemu_pid"]) and _alive(launched["supervisor_pid"])
        assert Path(launched["ssh_key"]).is_file()
        assert f"-p {launched['ssh_port']}" in launched["ssh"]

        listed = _json(capsys, ["instances", "list"])["instances"]
        assert [(i["instance_id"], i["state"], i["http_port"]) for i in listed] == \
            [(iid, "running", launched["http_port"])]

        def nginx_up() -> int:
            ans = http_get(launched["http_port"], "/404.html")
            if ans.status != 200:
                raise NotYet(f"GET /404.html answered {ans.status}")
            return ans.status
        wait_for(nginx_up, Waiter("nginx in the launched VM", attempts=150, interval=2,
                                  timeout=400), retry_on=(OSError,))
        # the console log is kept beside the instance while it runs (the role's
        # services start in parallel with the rest of the boot: the login
        # prompt may come a little after nginx)
        def login_prompt() -> bool:
            if "login:" not in Path(launched["serial_log"]).read_text(errors="replace"):
                raise NotYet("no login prompt on the serial console yet")
            return True
        wait_for(login_prompt, Waiter("the login prompt", attempts=60, interval=2,
                                      timeout=120))
    finally:
        stopped = _json(capsys, ["instances", "stop", iid])
    assert stopped == {"stopped": [iid]}
    assert not _alive(launched["qemu_pid"]) and not _alive(launched["supervisor_pid"])
    assert not (state / iid).exists()
    assert _json(capsys, ["instances", "list"]) == {"instances": []}
    assert main(["instances", "stop", iid]) == 1  # unknown now: a one-line error
    assert "no local instance" in capsys.readouterr().err
    assert not os.listdir(state)
