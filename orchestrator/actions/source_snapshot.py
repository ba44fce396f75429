"""source-snapshot: increment the complete-image snapshot and mark its AIM set (both inside the
quiesce hooks, if any, so the increment is application-consistent), wait for the destination point,
then apply retention to the destination's points in time."""

import time

from policies.retention import to_delete

from . import ActionContext
from .markers import settle
from .quiesce import quiesced


def run(ctx: ActionContext) -> None:
    p = ctx.policy
    api = ctx.nodes(p.node)
    t0 = time.monotonic()
    with quiesced(ctx):
        inc = api.enable_snapshot(p.snapshot)
        ctx.details["increment"] = {"blocks": inc["blocks"], "bytes": inc["bytes"], "seconds": inc["seconds"]}
        marker = api.replication.issue_marker(p.aim_set, p.destination_snapshot, p.marker_label)
    settle(ctx, marker, p.marker_wait)
    if p.retain:
        ctx.details["pruned"] = prune_destination(ctx)
    ctx.details["seconds"] = round(time.monotonic() - t0, 3)


def destination(ctx: ActionContext) -> tuple[str, str]:
    """(node, snapshot) of the policy's destination points in time."""
    p = ctx.policy
    aim = ctx.bundle.resource("aim_set", p.node, p.aim_set)
    return aim.spec["to"]["node"], p.destination_snapshot


def prune_destination(ctx: ActionContext, dry_run: bool = False) -> list[str]:
    """Delete the destination points the policy's retention no longer keeps (never the newest,
    never below ``min``)."""
    from datetime import datetime
    node, snapshot = destination(ctx)
    api = ctx.nodes(node)
    points = {datetime.fromisoformat(pt["created_at"].replace("Z", "+00:00")): pt["name"]
              for pt in api.snapshot_info(snapshot).get("points", [])}
    doomed = [points[t] for t in to_delete(points, ctx.policy.retain)]
    if not dry_run:
        for name in doomed:
            api.delete_point(snapshot, name)
    return doomed
