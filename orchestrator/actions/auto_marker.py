"""auto-marker: quiesce (``pre``), place the marker, thaw (``post``), then wait for the destination
point."""

from . import ActionContext
from .markers import settle
from .quiesce import quiesced


def run(ctx: ActionContext) -> None:
    p = ctx.policy
    with quiesced(ctx):
        marker = ctx.nodes(p.node).replication.issue_marker(p.aim_set, p.destination_snapshot, p.label)
    settle(ctx, marker, p.marker_wait)
