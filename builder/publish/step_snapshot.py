"""The EBS-backed root: the disk uploaded to a new snapshot (EBS direct APIs).

When the upload fails in a way worth resuming (`builder.steps.Resumable`:
retries exhausted, the network gone) the cleanup keeps the snapshot and the
upload journal, so that the same command run again sends only the missing
blocks, as the error's hint says. On an abort (Ctrl-C, a refusal, a later
step failing) it deletes both.
"""

from __future__ import annotations

from collections.abc import Callable

from builder.publish.context import EbsRoot, PublishContext
from builder.publish.images import delete_snapshot
from builder.publish.progress import Progress
from builder.publish.snapshot_upload import BLOCK_SIZE, UploadOptions, upload_disk
from builder.publish.upload_journal import journal_path
from builder.steps import Outcome


class UploadSnapshotStep:
    """Uploads the disk to a new EBS snapshot with the EBS direct APIs."""

    name = "upload-snapshot"

    def __init__(self, options: UploadOptions | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.options = options
        self.sleep = sleep

    def describe(self, ctx: PublishContext) -> str:
        img = ctx.image
        return (f"create snapshot in {ctx.home} from {img.disk_path} "
                f"({img.disk.apparent_size} bytes apparent, ~{img.disk.used_size} bytes used, "
                f"{BLOCK_SIZE // 1024} KiB blocks, zero blocks skipped)")

    def run(self, ctx: PublishContext) -> None:
        options = self.options or UploadOptions(
            concurrency=ctx.upload_concurrency,
            kms_key_arn=ctx.kms_key_ids.get(ctx.home),
            description=f"{ctx.ami_name} root volume",
            tags={t["Key"]: t["Value"] for t in ctx.tag_list()},
        )
        progress = Progress(ctx.out, max(ctx.image.disk.used_size, 1), "upload")

        def on_snapshot(snapshot_id: str) -> None:
            ctx.track(self.name, "snapshot", ctx.home, snapshot_id)
            ctx.root = EbsRoot(snapshot_id)

        extra = {"sleep": self.sleep} if self.sleep else {}
        result = upload_disk(
            ctx.clients.ebs(ctx.home), ctx.clients.ec2(ctx.home), ctx.image.disk_path,
            disk_digest=ctx.image.disk.digest, requested_gib=ctx.image.volume_size_gib,
            options=options, retries=ctx.clients.retries, on_snapshot=on_snapshot,
            on_progress=progress.advance, on_total=progress.set_total, **extra,
        )
        progress.finish()
        ctx.upload = result
        ctx.snapshot_ids.setdefault(ctx.home, []).append(result.snapshot_id)
        ctx.out.say(f"snapshot {result.snapshot_id}: {result.blocks_sent} blocks sent, "
                    f"{result.blocks_resumed} resumed, {result.retries} retries")

    def cleanup(self, ctx: PublishContext, outcome: Outcome) -> None:
        mine = [r for r in ctx.ledger if r.step == self.name]
        if outcome == "resumable":
            for res in mine:
                ctx.untrack(res.kind, res.region, res.ident)
                ctx.out.say(f"kept snapshot {res.ident} in {res.region} and "
                            f"{journal_path(ctx.image.disk_path).name} to resume from")
            return
        for res in mine:
            delete_snapshot(ctx.clients.ec2(res.region), res.ident)
            ctx.untrack(res.kind, res.region, res.ident)
            ctx.out.say(f"cleanup: deleted snapshot {res.ident} in {res.region}")
        journal_path(ctx.image.disk_path).unlink(missing_ok=True)
