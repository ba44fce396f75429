"""Retention at the destination: a policy prunes only the points in time it made.

A policy's markers carry its name as their label (or its ``marker.label``), and the destination
names each point ``LABEL.TIMESTAMP``; so the points of a policy are known from the destination
alone, with no outcome store needed, and a point made by hand or by another policy sharing the
snapshot is never touched. A group policy's point is one name across every member of the snapshot
set, deleted from all of them together.
"""

import re
from datetime import datetime, timezone

from engine import Conflict, NotFound
from policies.retention import to_delete

from . import ActionContext

STAMP = r"\d{8}T\d{6}\.\d{3}Z"


def destination(ctx: ActionContext) -> tuple[str, list[str]]:
    """(node, snapshots) that hold the policy's destination points."""
    p, b = ctx.policy, ctx.bundle
    if p.kind == "group":
        group = b.resource("group", p.node, p.group)
        first = b.resource("aim_set", p.node, group.spec["members"][0])
        node = first.spec["to"]["node"]
        return node, list(b.resource("snapshot_set", node, p.destination_snapshot_set).spec["members"])
    return b.resource("aim_set", p.node, p.aim_set).spec["to"]["node"], [p.destination_snapshot]


def stamp_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)


def policy_points(ctx: ActionContext) -> tuple[str, list[str], dict[datetime, str]]:
    """(node, snapshots, {time: point}) of the points this policy made that every snapshot holds."""
    node, snapshots = destination(ctx)
    api = ctx.nodes(node)
    mine = re.compile(rf"^{re.escape(ctx.policy.label)}\.({STAMP})$")
    held = None
    for snap in snapshots:
        names = {pt["name"] for pt in api.snapshot_info(snap).get("points", []) if mine.match(pt["name"])}
        held = names if held is None else held & names
    return node, snapshots, {stamp_time(mine.match(n).group(1)): n for n in held or ()}


def prune_destination(ctx: ActionContext, dry_run: bool = False) -> list[str]:
    """Delete the policy's destination points its ``retain`` no longer keeps (never the newest,
    never below ``min``); the names, oldest first. A point with clones (a DR test using it) is
    kept until they are gone: the run says so in ``details["kept"]``."""
    node, snapshots, points = policy_points(ctx)
    doomed = [points[t] for t in sorted(to_delete(points, ctx.policy.retain))]
    if dry_run:
        return doomed
    api, deleted = ctx.nodes(node), []
    clones: dict[str, list[str]] = {}
    for c in api.list_clones():
        clones.setdefault(c["from"], []).append(c["name"])
    for name in doomed:
        users = sorted(u for snap in snapshots for u in clones.get(f"{snap}@{name}", []))
        if users:  # a set's point goes from every member or from none
            ctx.details.setdefault("kept", []).append(
                {"point": name, "reason": f"in use by clone(s) {', '.join(users)}: kept until they are deleted"})
            continue
        try:
            for snap in snapshots:
                try:
                    api.delete_point(snap, name)
                except NotFound:  # deleted meanwhile (by hand, or a run that pruned first)
                    pass
            deleted.append(name)
        except Conflict as e:  # cloned: kept, and the next run tries again
            ctx.details.setdefault("kept", []).append({"point": name, "reason": str(e)})
    return deleted
