"""Roll a stack's Auto Scaling groups onto a new launch template version, checked by the
load balancer and rolled back when the new instances fail its health checks.

CloudFormation's own rolling update has no health verdict without instance signals, so
the template gives the groups no UpdatePolicy and points them at their launch template's
*default* version: a stack update adds a version and replaces no instance. `stack deploy`
then starts one instance refresh per group whose instances run an older version, with the
new version as its desired configuration (automatic rollback needs one, and numbered
versions on both sides): new instances are launched first (MinHealthyPercentage 100,
MaxHealthyPercentage 200), count once the group's ELB health check (grace period and
warm-up GRACE_SECONDS) passes, and a failed refresh puts the old version back
(AutoRollback). Only a successful refresh makes the new version the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.errors import UserError
from builder.stack.template import GRACE_SECONDS
from builder.wait import NotYet, Waiter, wait_for

PREFERENCES: dict[str, Any] = {
    "MinHealthyPercentage": 100,
    "MaxHealthyPercentage": 200,
    "InstanceWarmup": GRACE_SECONDS,
    "SkipMatching": True,
    "AutoRollback": True,
    "StandbyInstances": "Terminate",
    "ScaleInProtectedInstances": "Refresh",
}
#: an instance refresh that has finished
FINISHED = ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")
REFRESH_WAITER = Waiter("the instance refresh", attempts=1080, interval=10.0,
                        timeout=3 * 3600,
                        hint="`aws autoscaling describe-instance-refreshes` shows where it is")
GROUP_TYPE = "AWS::AutoScaling::AutoScalingGroup"


@dataclass(frozen=True)
class Roll:
    """Group `group` runs `old` of launch template `template_id`; `new` is the latest."""

    group: str
    template_id: str
    old: str
    new: str


def stack_groups(cfn: Any, stack: str) -> list[str]:
    """The physical names of the stack's Auto Scaling groups."""
    pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack)
    return sorted(r["PhysicalResourceId"] for page in pages
                  for r in page["StackResourceSummaries"] if r["ResourceType"] == GROUP_TYPE)


def pending(asg: Any, ec2: Any, groups: list[str]) -> list[Roll]:
    """The groups with an instance older than their launch template's latest version."""
    if not groups:
        return []
    rolls = []
    found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=groups)["AutoScalingGroups"]
    for g in found:
        spec = g.get("LaunchTemplate") or {}
        template_id = spec.get("LaunchTemplateId")
        if not template_id:
            continue
        lt = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
        latest = str(lt["LatestVersionNumber"])
        running = {str((i.get("LaunchTemplate") or {}).get("Version", spec.get("Version")))
                   for i in g.get("Instances", [])}
        old = min((v for v in running - {latest} if v.isdigit()), key=int, default=None)
        if old is not None:
            rolls.append(Roll(g["AutoScalingGroupName"], template_id, old, latest))
    return rolls


def roll(asg: Any, ec2: Any, r: Roll, *, say: Callable[[str], None],
         sleep: Callable[[float], None], waiter: Waiter = REFRESH_WAITER) -> None:
    """Refresh group `r.group` onto `r.new`; a UserError when the new instances fail (the
    refresh has then rolled back to `r.old`)."""
    spec = {"LaunchTemplateId": r.template_id, "Version": r.old}
    # rollback returns to the group's saved configuration: make that the running version
    asg.update_auto_scaling_group(AutoScalingGroupName=r.group, LaunchTemplate=spec)
    started = asg.start_instance_refresh(
        AutoScalingGroupName=r.group, Strategy="Rolling",
        DesiredConfiguration={"LaunchTemplate": {**spec, "Version": r.new}},
        Preferences=PREFERENCES)
    refresh_id = started["InstanceRefreshId"]
    say(f"{r.group}: instance refresh {refresh_id}, launch template version {r.old} → {r.new}")

    def finished() -> dict[str, Any]:
        (state,) = asg.describe_instance_refreshes(
            AutoScalingGroupName=r.group, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"]
        if state["Status"] not in FINISHED:
            raise NotYet(f"{r.group}: {state['Status']} "
                         f"{state.get('PercentageComplete', 0)}%")
        return state  # type: ignore[no-any-return]

    state = wait_for(finished, waiter, sleep=sleep)
    if state["Status"] != "Successful":
        back = ("rolled back to launch template version " + r.old
                if state["Status"] == "RollbackSuccessful" else "not rolled back")
        raise UserError(f"{r.group}: instance refresh {state['Status']} ({back}): "
                        f"{state.get('StatusReason') or 'no reason given'}",
                        hint="the new instances failed the load balancer's health checks; "
                             "boot-test the image (`amibake bake`) and publish a fixed version")
    ec2.modify_launch_template(LaunchTemplateId=r.template_id, DefaultVersion=r.new)
    say(f"{r.group}: now on launch template version {r.new}")
