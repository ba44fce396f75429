"""source-snapshot: increment the complete-image snapshot and mark its AIM set (both inside the
quiesce hooks, if any, so the increment is application-consistent), wait for the destination point."""

import time

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
        marker = api.replication.issue_marker(p.aim_set, p.destination_snapshot, p.label)
    settle(ctx, marker, p.marker_wait)
    ctx.details["seconds"] = round(time.monotonic() - t0, 3)

