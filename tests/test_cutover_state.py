"""The persisted state machine: atomic saves, resume, waiting, dry run, CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.cutover.state import CutoverState, NotYet, run_steps
from builder.errors import UserError


@dataclass(frozen=True)
class FakeStep:
    """A step that appends to a log: the runner is tested on its own here."""

    name: str
    log: list[str]
    fail: bool = False
    wait: bool = False

    def describe(self, ctx: Any) -> str:
        return f"would {self.name}"

    def run(self, ctx: Any) -> str:
        self.log.append(self.name)
        if self.wait:
            raise NotYet("not yet")
        if self.fail:
            raise RuntimeError("boom")
        return f"{self.name} ok"


def test_save_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    state = CutoverState.new("m.yaml", "replicate", ["a", "b"])
    state.facts.old_address = "192.0.2.10"
    state.facts.sequences = [["public", "s", 5]]
    state.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp left
    again = CutoverState.load(path)
    assert again == state
    # a crash while writing (simulated: unwritable object) leaves the old file intact
    state.facts.old_address = object()  # type: ignore[assignment]
    with pytest.raises(TypeError):
        state.save(path)
    assert CutoverState.load(path).facts.old_address == "192.0.2.10"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_runner_resumes_and_records_events(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    log: list[str] = []
    steps = [FakeStep("a", log), FakeStep("b", log, fail=True), FakeStep("c", log)]
    state = CutoverState.new("m", "dump", [s.name for s in steps])
    with pytest.raises(RuntimeError):
        run_steps(steps, state.steps, None, state, path, say=lambda s: None)
    on_disk = json.loads(path.read_text())
    assert [s["status"] for s in on_disk["steps"]] == ["done", "failed", "pending"]
    assert on_disk["steps"][1]["error"] == "boom"
    state = CutoverState.load(path)
    steps[1] = FakeStep("b", log)
    run_steps(steps, state.steps, None, state, path, say=lambda s: None)
    assert log == ["a", "b", "b", "c"]
    events = [(e["step"], e["event"]) for e in CutoverState.load(path).events]
    assert events == [("a", "start"), ("a", "done"), ("b", "start"), ("b", "failed"),
                      ("b", "start"), ("b", "done"), ("c", "start"), ("c", "done")]


def test_waiting_step_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    log: list[str] = []
    steps = [FakeStep("a", log), FakeStep("w", log, wait=True)]
    state = CutoverState.new("m", "dump", ["a", "w"])
    with pytest.raises(NotYet):
        run_steps(steps, state.steps, None, state, path, say=lambda s: None)
    assert [r.status for r in CutoverState.load(path).steps] == ["done", "waiting"]
    assert CutoverState.load(path).next_step == "w"


def test_state_file_of_another_version_is_refused(tmp_path: Path) -> None:
    from builder.errors import UserError

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(UserError, match="version"):
        CutoverState.load(path)


def test_downtime_from_recorded_times() -> None:
    state = CutoverState.new("m", "replicate", [])
    state.facts.maintenance_on_at = "2026-12-06T04:59:00.000+00:00"
    state.facts.dns_switched_at = "2026-12-06T04:59:01.250+00:00"
    assert state.downtime_s() == 1.25


def test_state_dir_fsync_does_not_leave_fds(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    state = CutoverState.new("m", "dump", ["a"])
    for _ in range(20):
        state.save(tmp_path / "s.json")
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("{not json"), "cannot read the cutover state"),
    (lambda p: p.write_text("[1, 2]"), "cannot read the cutover state"),
    (lambda p: p.write_bytes(b"\xff\xfe"), "not UTF-8"),
    (lambda p: (p.touch(), os.truncate(p, 17 * 1024 * 1024)), "too large"),
])
def test_unusable_state_file_is_a_user_error(tmp_path: Path, make: Any, says: str) -> None:
    path = tmp_path / "state.json"
    make(path)
    with pytest.raises(UserError, match=says):
        CutoverState.load(path)


def test_state_file_is_private_from_creation(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state.json"
    CutoverState.new("m", "dump", ["a"]).save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
