"""group: one marker across the group's AIM sets (inside the quiesce hooks, if any); the destination
enables the snapshot set once every member has reached it."""

from . import ActionContext
from .markers import settle
from .quiesce import quiesced


def run(ctx: ActionContext) -> None:
    p = ctx.policy
    with quiesced(ctx):
        marker = ctx.nodes(p.node).replication.issue_group_marker(p.group, p.destination_snapshot_set, p.label)
    settle(ctx, marker, p.marker_wait)
