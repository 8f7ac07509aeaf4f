"""Execute a change set, delete a stack, read where a stack stands.

Progress comes from the stack's events, polled with the one waiter (builder/wait.py)
on describe_stacks; no botocore waiter (they carry retries of their own). A failure is
told by the first FAILED event of this run: the resource and CloudFormation's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from builder.errors import UserError
from builder.stack.changeset import NOT_CREATED, Plan, describe_stack, find_stack
from builder.wait import NotYet, Waiter, wait_for

#: a stack in one of these states has finished what it was doing, well
DONE = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE")
#: finished, badly (rolled back or stuck)
FAILED = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "UPDATE_ROLLBACK_COMPLETE",
          "UPDATE_ROLLBACK_FAILED", "UPDATE_FAILED", "DELETE_FAILED", "IMPORT_ROLLBACK_COMPLETE",
          "IMPORT_ROLLBACK_FAILED")
#: a long stack operation (instances booting behind a load balancer, rolling updates)
DEPLOY_WAITER = Waiter("the stack to settle", attempts=720, interval=10.0, timeout=3 * 3600,
                       hint="`amibake stack status MANIFEST` shows where it stands")


def event_line(e: dict[str, Any]) -> str:
    reason = e.get("ResourceStatusReason") or ""
    when: Any = e.get("Timestamp")
    stamp = when.strftime("%H:%M:%S ") if isinstance(when, datetime) else ""
    return (f"{stamp}{e.get('ResourceStatus', '')} {e.get('LogicalResourceId', '')} "
            f"({e.get('ResourceType', '')})" + (f": {reason}" if reason else ""))


@dataclass
class Events:
    """The stack's events, newest first as CloudFormation lists them; `new()` gives the
    ones not seen before, oldest first."""

    cfn: Any
    stack: str
    seen: set[str] = field(default_factory=set)

    def page(self) -> list[dict[str, Any]]:
        try:
            return list(self.cfn.describe_stack_events(StackName=self.stack)["StackEvents"])
        except ClientError as exc:
            if "does not exist" in str(exc):
                return []
            raise

    def mark_seen(self) -> None:
        self.seen |= {e["EventId"] for e in self.page()}

    def new(self) -> list[dict[str, Any]]:
        fresh = [e for e in self.page() if e["EventId"] not in self.seen]
        self.seen |= {e["EventId"] for e in fresh}
        return list(reversed(fresh))


def first_failure(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first FAILED resource event (oldest first): the cause, not the rollback's echo."""
    for e in events:
        if str(e.get("ResourceStatus", "")).endswith("FAILED") and \
                e.get("ResourceStatusReason") and \
                e.get("LogicalResourceId") != e.get("StackName"):
            return e
    for e in events:
        if str(e.get("ResourceStatus", "")).endswith("FAILED"):
            return e
    return None


def outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def site_address(cfn: Any, stack: str) -> str:
    """The deployed stack's `SiteAddress` output (the cutover's `dns.new_address`)."""
    found = describe_stack(cfn, stack)
    site = outputs(found).get("SiteAddress") if found is not None else None
    if not site:
        state = found["StackStatus"] if found is not None else "does not exist"
        raise UserError(f"stack {stack} has no SiteAddress output ({state})",
                        hint="`amibake stack deploy MANIFEST` first")
    return site


def _settle(cfn: Any, stack: str, events: Events, say: Callable[[str], None],
            waiter: Waiter, sleep: Callable[[float], None], *, gone_ok: bool = False
            ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Poll until the stack is no longer IN_PROGRESS; print its new events on the way.
    Returns the stack (None when it is gone) and every event of this run, oldest first."""
    run: list[dict[str, Any]] = []

    def settled() -> dict[str, Any] | None:
        for e in events.new():
            run.append(e)
            say(event_line(e))
        found = find_stack(cfn, stack)
        if found is None:
            if gone_ok:
                return None
            raise UserError(f"stack {stack} does not exist")
        status = found["StackStatus"]
        if status == "DELETE_COMPLETE" and gone_ok:
            return None
        if status.endswith("_IN_PROGRESS") or status in NOT_CREATED:
            raise NotYet(f"stack {stack} is {status}")
        return found  # type: ignore[no-any-return]

    found = wait_for(settled, waiter, sleep=sleep)
    for e in events.new():
        run.append(e)
        say(event_line(e))
    return found, run


def _failed(stack: str, status: str, run: list[dict[str, Any]]) -> UserError:
    cause = first_failure(run)
    if cause is None:
        return UserError(f"stack {stack} is {status}",
                         hint="`amibake stack status` shows the stack's last events")
    return UserError(f"stack {stack} is {status}: {cause.get('LogicalResourceId')} "
                     f"({cause.get('ResourceType')}) {cause.get('ResourceStatus')}: "
                     f"{cause.get('ResourceStatusReason') or 'no reason given'}",
                     hint="fix the manifest (or the account's limits), then plan and "
                          "deploy again")


def execute(cfn: Any, p: Plan, *, say: Callable[[str], None],
            waiter: Waiter = DEPLOY_WAITER,
            sleep: Callable[[float], None]) -> dict[str, Any]:
    """Execute the plan's change set and wait until the stack settles (polled by the
    change set's stack id). Returns the stack; a failed (rolled back) stack is a
    UserError naming the first failed resource."""
    stack, target = p.stack, p.stack_id or p.stack
    events = Events(cfn, target)
    events.mark_seen()
    cfn.execute_change_set(StackName=target, ChangeSetName=p.change_set_id or p.change_set)
    found, run = _settle(cfn, target, events, say, waiter, sleep)
    assert found is not None
    if found["StackStatus"] not in DONE:
        raise _failed(stack, found["StackStatus"], run)
    return found


def delete(cfn: Any, stack: str, *, say: Callable[[str], None],
           waiter: Waiter = DEPLOY_WAITER, sleep: Callable[[float], None]) -> bool:
    """Delete the stack and wait until it is gone; False when there was none. Polls by
    stack id: a deleted stack's name no longer answers, its id does (with its events)."""
    existing = find_stack(cfn, stack)
    if existing is None:
        return False
    stack_id = str(existing["StackId"])
    events = Events(cfn, stack_id)
    events.mark_seen()
    cfn.delete_stack(StackName=stack_id)
    found, run = _settle(cfn, stack_id, events, say, waiter, sleep, gone_ok=True)
    if found is not None:
        raise _failed(stack, found["StackStatus"], run)
    return True


@dataclass(frozen=True)
class Status:
    stack: str
    status: str  # "" when the stack does not exist
    reason: str
    outputs: dict[str, str]
    events: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "status": self.status or None, "reason": self.reason,
                "outputs": self.outputs,
                "events": [{k: e.get(k) for k in ("Timestamp", "LogicalResourceId",
                                                  "ResourceType", "ResourceStatus",
                                                  "ResourceStatusReason")}
                           for e in self.events]}

    def text(self) -> str:
        if not self.status:
            return f"stack {self.stack} does not exist"
        lines = [f"stack {self.stack}: {self.status}" + (f" ({self.reason})" if self.reason
                                                          else "")]
        lines += [f"  {k}: {v}" for k, v in sorted(self.outputs.items())]
        if self.events:
            lines.append("last events:")
            lines += [f"  {event_line(e)}" for e in self.events]
        return "\n".join(lines)


def status(cfn: Any, stack: str, *, last: int = 10) -> Status:
    found = describe_stack(cfn, stack)
    if found is None:
        return Status(stack, "", "", {}, [])
    recent = Events(cfn, stack).page()[:last]
    return Status(stack, found["StackStatus"], str(found.get("StackStatusReason", "") or ""),
                  outputs(found), list(reversed(recent)))
