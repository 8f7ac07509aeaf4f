"""Change sets: what CloudFormation would add, modify or replace for a manifest's template.

`plan` creates a change set (CREATE for a new stack, UPDATE for an existing one) named
for the template's digest, waits (the one waiter) until CloudFormation has computed it,
and reads its changes. `deploy` finds that change set again by name, so a plan and the
deploy that follows it act on the same template; `discard` deletes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from builder.errors import UserError
from builder.wait import NotYet, Waiter, wait_for

#: CloudFormation's limit for a template passed inline (TemplateBody)
MAX_TEMPLATE_BODY = 51_200
#: the template's IAM roles have generated names: CAPABILITY_IAM is enough
CAPABILITIES = ["CAPABILITY_IAM"]
#: CloudFormation computes a change set in seconds to a minute
PLAN_WAITER = Waiter("the change set to be computed", attempts=120, interval=5.0,
                     hint="`amibake stack status MANIFEST` shows the stack")
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
#: stack states in which a stack does not exist yet for a change set (only reviewed)
NOT_CREATED = ("REVIEW_IN_PROGRESS",)


@dataclass(frozen=True)
class Change:
    """One resource change: Add, Modify, Remove (or Import, Dynamic)."""

    action: str
    logical_id: str
    resource_type: str
    #: "True", "False", "Conditional" for a Modify; "" when CloudFormation says nothing
    replacement: str = ""
    #: the property names that change (Details), when CloudFormation gives them
    properties: tuple[str, ...] = ()

    @property
    def replaces(self) -> bool:
        return self.replacement in ("True", "Conditional")

    def line(self) -> str:
        what = self.action
        if self.replaces:
            what += f" (replacement: {self.replacement})"
        props = f"  [{', '.join(self.properties)}]" if self.properties else ""
        return f"  {what:<34} {self.logical_id} ({self.resource_type}){props}"


@dataclass(frozen=True)
class Plan:
    stack: str
    kind: str  # CREATE | UPDATE
    change_set: str  # name
    change_set_id: str
    changes: tuple[Change, ...]
    stack_id: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"stack": self.stack, "type": self.kind, "change_set": self.change_set,
                "change_set_id": self.change_set_id,
                "changes": [asdict(c) for c in self.changes]}

    def text(self) -> str:
        if not self.changes:
            return f"stack {self.stack}: no changes"
        head = (f"stack {self.stack}: {self.kind} change set {self.change_set}, "
                f"{len(self.changes)} change(s)")
        return "\n".join([head, *(c.line() for c in self.changes)])


def change_set_name(body: str) -> str:
    """`amibake-<digest>`: the same template gets the same change set name."""
    return "amibake-" + hashlib.sha256(body.encode()).hexdigest()[:20]


def check_size(body: str) -> None:
    if len(body.encode()) > MAX_TEMPLATE_BODY:
        raise UserError(f"the stack template is {len(body.encode())} bytes; CloudFormation "
                        f"takes at most {MAX_TEMPLATE_BODY} inline",
                        hint="fewer roles per stack, or shorter user-data")


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", exc))


def find_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack in any state, or None when CloudFormation has none of that name."""
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in _message(exc):
            return None
        raise
    return stacks[0] if stacks else None


def describe_stack(cfn: Any, stack: str) -> dict[str, Any] | None:
    """The stack, or None when it does not exist (or was only reviewed, never created)."""
    found = find_stack(cfn, stack)
    if found is None or found["StackStatus"] in NOT_CREATED:
        return None
    return found


def _changes(cfn: Any, stack: str, name: str) -> tuple[dict[str, Any], list[Change]]:
    """The change set's description (first page) and every change (all pages)."""
    kwargs: dict[str, Any] = {"StackName": stack, "ChangeSetName": name}
    first: dict[str, Any] | None = None
    changes: list[Change] = []
    while True:
        page = cfn.describe_change_set(**kwargs)
        first = first or page
        for item in page.get("Changes", []):
            rc = item.get("ResourceChange", {})
            props = tuple(sorted({d["Target"]["Name"] for d in rc.get("Details", [])
                                  if d.get("Target", {}).get("Name")}))
            changes.append(Change(rc.get("Action", ""), rc.get("LogicalResourceId", ""),
                                  rc.get("ResourceType", ""), str(rc.get("Replacement", "")),
                                  props))
        token = page.get("NextToken")
        if not token:
            return first, changes
        kwargs["NextToken"] = token


def wait_computed(cfn: Any, stack: str, name: str, *, waiter: Waiter,
                  sleep: Callable[[float], None]) -> tuple[dict[str, Any], list[Change]]:
    """Until CloudFormation has computed the change set (CREATE_COMPLETE or FAILED)."""
    def computed() -> tuple[dict[str, Any], list[Change]]:
        described, changes = _changes(cfn, stack, name)
        if described["Status"] in ("CREATE_PENDING", "CREATE_IN_PROGRESS"):
            raise NotYet(f"change set {name} is {described['Status']}")
        return described, changes

    return wait_for(computed, waiter, sleep=sleep)


def plan(cfn: Any, stack: str, body: str, *, description: str,
         sleep: Callable[[float], None], waiter: Waiter = PLAN_WAITER) -> Plan:
    """Create (or find, when this template's change set is still available) the change set
    and read its changes. A template that changes nothing leaves no change set behind."""
    check_size(body)
    name = change_set_name(body)
    kind = "CREATE" if describe_stack(cfn, stack) is None else "UPDATE"
    found = find_available(cfn, stack, name)
    if found is None:
        try:
            cfn.create_change_set(StackName=stack, ChangeSetName=name, TemplateBody=body,
                                  ChangeSetType=kind, Capabilities=CAPABILITIES,
                                  Description=description[:1024])
        except ClientError as exc:
            if any(text in _message(exc) for text in NO_CHANGES):
                return Plan(stack, kind, "", "", ())
            raise UserError(f"CloudFormation refused the change set for stack {stack}: "
                            f"{_message(exc)}",
                            hint="`amibake stack template MANIFEST` writes the template; "
                                 "check it with cfn-lint") from None
    described, changes = wait_computed(cfn, stack, name, waiter=waiter, sleep=sleep)
    if described["Status"] == "FAILED":
        reason = str(described.get("StatusReason", ""))
        cfn.delete_change_set(StackName=stack, ChangeSetName=described.get("ChangeSetId", name))
        if any(text in reason for text in NO_CHANGES):
            return Plan(stack, kind, "", "", ())
        raise UserError(f"CloudFormation could not compute the change set for stack {stack}: "
                        f"{reason}", hint="check the template with cfn-lint")
    return Plan(stack, kind, name, str(described.get("ChangeSetId", "")), tuple(changes),
                str(described.get("StackId", "")))


def find_available(cfn: Any, stack: str, name: str) -> dict[str, Any] | None:
    """This template's change set when it exists and can still be executed."""
    try:
        described = cfn.describe_change_set(StackName=stack, ChangeSetName=name)
    except ClientError as exc:
        if "does not exist" in _message(exc) or "ChangeSetNotFound" in str(exc):
            return None
        raise
    if described.get("ExecutionStatus") == "AVAILABLE":
        return described  # type: ignore[no-any-return]
    if described.get("ExecutionStatus") in ("UNAVAILABLE", "OBSOLETE", "EXECUTE_FAILED"):
        cfn.delete_change_set(StackName=stack, ChangeSetName=described.get("ChangeSetId", name))
    return None


def discard(cfn: Any, p: Plan) -> None:
    if p.change_set:
        cfn.delete_change_set(StackName=p.stack, ChangeSetName=p.change_set_id or p.change_set)
