"""deprecate, prune and gc against moto (deprecation asserted on the request:
moto has no EnableImageDeprecation)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from builder.errors import UserError
from builder.manifest import Manifest
from builder.publish.lifecycle import deprecate, gc, parse_when, prune
from builder.publish.run import publish
from builder.publish.step_prevalidate import PrevalidateStep
from builder.publish.step_register import RegisterImageStep
from builder.publish.step_tag import TagImageStep
from tests.aws_fixtures import (
    Aws,
    fake_response,
    make_stored_image,
)
from tests.test_publish_ebs import REGIONS, fast_steps, make_ctx

pytest_plugins = ("tests.aws_plugin",)  # fixtures: aws, store, manifest


def publish_versions(aws: Aws, store: Path, manifest: Manifest,
                     versions: list[str]) -> dict[str, dict[str, str]]:
    ids = {}
    for i, version in enumerate(versions):
        if not (store / "smallpayroll" / version).exists():
            make_stored_image(store, version=version, seed=100 + i)
        ids[version] = publish(make_ctx(aws, store, manifest, version=version),
                               fast_steps())["images"]
    return ids


def test_deprecate_sends_the_date_for_every_region(aws: Aws, store: Path,
                                                   manifest: Manifest) -> None:
    ids = publish_versions(aws, store, manifest, ["1.0.0"])
    aws.on("before-call.ec2.EnableImageDeprecation",
           lambda **_: fake_response({"Return": True}))
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    plan = deprecate(aws.clients, REGIONS, "smallpayroll", "1.0.0",
                     parse_when("2027-01-31"), now=now)
    calls = aws.recorder.of("EnableImageDeprecation")
    assert {c.params["ImageId"] for c in calls} == set(ids["1.0.0"].values())
    assert {c.params["DeprecateAt"] for c in calls} == {"2027-01-31T00:00:00Z"}
    assert len(plan.of("change")) == 2
    with pytest.raises(UserError, match="in the past"):
        deprecate(aws.clients, REGIONS, "smallpayroll", "1.0.0", parse_when("2020-01-01"))
    with pytest.raises(UserError, match="no published AMI"):
        deprecate(aws.clients, REGIONS, "smallpayroll", "9.9.9", parse_when("2027-01-01"),
                  now=now)


def test_prune_keeps_newest_latest_and_in_use(aws: Aws, store: Path,
                                              manifest: Manifest) -> None:
    ids = publish_versions(aws, store, manifest, ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0"])
    home = aws.clients.ec2("us-east-1")
    # 1.0.0 runs in eu-west-1; 1.1.0 is in a launch template
    aws.clients.ec2("eu-west-1").run_instances(
        ImageId=ids["1.0.0"]["eu-west-1"], MinCount=1, MaxCount=1, InstanceType="t3.small")
    home.create_launch_template(LaunchTemplateName="web",
                                LaunchTemplateData={"ImageId": ids["1.1.0"]["us-east-1"]})
    # point latest back to 1.2.0 (a rollback)
    for region in REGIONS:
        aws.clients.ssm(region).put_parameter(
            Name="/amibake/smallpayroll/latest", Value=ids["1.2.0"][region], Type="String",
            DataType="aws:ec2:image", Overwrite=True)
    dry = prune(aws.clients, REGIONS, "smallpayroll", keep=1, dry_run=True)
    assert aws.recorder.of("DeregisterImage") == []
    deleted = {a.ident for a in dry.of("delete") if a.kind == "image"}
    assert deleted == {ids["1.3.0"][r] for r in REGIONS}
    reasons = {a.reason for a in dry.of("keep")}
    assert any("instance" in r for r in reasons)
    assert any("launch template web" in r for r in reasons)
    assert any("SSM" in r for r in reasons)

    snaps = {r: set(aws.own_snapshots(r)) for r in REGIONS}
    prune(aws.clients, REGIONS, "smallpayroll", keep=1)
    for region in REGIONS:
        left = set(aws.own_images(region))
        assert ids["1.3.0"][region] not in left
        assert {ids[v][region] for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0")} <= left
        gone = snaps[region] - set(aws.own_snapshots(region))
        assert gone == {a.ident for a in dry.of("delete")
                        if a.kind == "snapshot" and a.region == region}
        assert gone
        names = {p["Name"] for p in aws.clients.ssm(region).describe_parameters()["Parameters"]}
        assert "/amibake/smallpayroll/1.3.0" not in names
        assert "/amibake/smallpayroll/2.0.0" in names


def test_prune_resolves_ssm_names_in_launch_templates(aws: Aws, store: Path,
                                                     manifest: Manifest) -> None:
    ids = publish_versions(aws, store, manifest, ["1.0.0", "1.1.0", "1.2.0"])
    aws.clients.ec2().create_launch_template(
        LaunchTemplateName="pinned",
        LaunchTemplateData={"ImageId": "resolve:ssm:/amibake/smallpayroll/1.0.0"})
    plan = prune(aws.clients, REGIONS, "smallpayroll", keep=1, dry_run=True)
    deleted = {a.ident for a in plan.of("delete") if a.kind == "image"}
    assert deleted == {ids["1.1.0"][r] for r in REGIONS}
    kept = [a for a in plan.of("keep") if a.ident == ids["1.0.0"]["us-east-1"]]
    assert "launch template pinned" in kept[0].reason


def test_gc_removes_a_crashed_runs_leftovers_only(aws: Aws, store: Path,
                                                  manifest: Manifest) -> None:
    done = publish_versions(aws, store, manifest, ["1.0.0"])
    make_stored_image(store, version="1.1.0", seed=5)
    ctx = make_ctx(aws, store, manifest, version="1.1.0")
    # a run that died after tagging (no cleanup ran)
    for step in [PrevalidateStep(), fast_steps()[1], RegisterImageStep(), TagImageStep()]:
        step.run(ctx)
    crashed = ctx.image_ids["us-east-1"]
    # and an upload that died before register
    make_stored_image(store, version="1.2.0", seed=6)
    ctx2 = make_ctx(aws, store, manifest, version="1.2.0")
    fast_steps()[1].run(ctx2)
    orphan = ctx2.root.snapshot_id  # type: ignore[union-attr]

    with pytest.raises(UserError, match="left over from an unfinished publish") as err:
        publish(make_ctx(aws, store, manifest, version="1.1.0"), fast_steps())
    assert f"amibake amis gc --build-id {ctx.build_id} --min-age 0" in err.value.hint
    young = gc(aws.clients, REGIONS, dry_run=True)  # default: leave the last hour alone
    assert young.of("delete") == []
    plan = gc(aws.clients, REGIONS, min_age_seconds=0, dry_run=True)
    doomed = {a.ident for a in plan.of("delete")}
    assert crashed in doomed and orphan in doomed
    assert not doomed & set(done["1.0.0"].values())
    gc(aws.clients, REGIONS, min_age_seconds=0)
    assert aws.own_images("us-east-1") == [done["1.0.0"]["us-east-1"]]
    assert orphan not in aws.own_snapshots("us-east-1")
    for snap in aws.own_snapshots("us-east-1"):
        tags: dict[str, Any] = {t["Key"]: t["Value"] for t in aws.clients.ec2().describe_snapshots(
            SnapshotIds=[snap])["Snapshots"][0].get("Tags", [])}
        assert tags.get("amibake:complete") == "true"
    # after gc the crashed version publishes cleanly
    publish(make_ctx(aws, store, manifest, version="1.1.0"), fast_steps())


def test_prune_everything_then_nothing_left(aws: Aws, store: Path,
                                            manifest: Manifest) -> None:
    publish_versions(aws, store, manifest, ["1.0.0", "1.1.0"])
    for region in REGIONS:
        aws.clients.ssm(region).delete_parameter(Name="/amibake/smallpayroll/latest")
    prune(aws.clients, REGIONS, "smallpayroll", keep=1)
    assert len(aws.own_images("us-east-1")) == 1
    with pytest.raises(UserError):
        prune(aws.clients, REGIONS, "smallpayroll", keep=0)
