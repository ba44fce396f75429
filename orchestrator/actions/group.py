"""group: one marker across the group's AIM sets; the destination enables the snapshot set once
every member has reached it."""

from . import ActionContext
from .markers import settle


def run(ctx: ActionContext) -> None:
    p = ctx.policy
    marker = ctx.nodes(p.node).replication.issue_group_marker(p.group, p.destination_snapshot_set, p.marker_label)
    settle(ctx, marker, p.marker_wait)
