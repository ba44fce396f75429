"""Waiting for a marker, recording it, and turning its outcome into the run's."""

import time

from . import ActionContext, ActionFailed, ActionTimeout


def settle(ctx: ActionContext, marker: dict, wait: float) -> dict:
    """Wait (up to ``wait`` seconds) until the destination applied or failed ``marker``; record it."""
    t0 = time.monotonic()
    if marker["state"] == "issued":
        marker = ctx.nodes(ctx.policy.node).replication.wait(marker["id"], wait)
    ctx.details["marker"] = {k: marker.get(k) for k in ("id", "state", "point", "issued_at", "applied_at", "error")}
    ctx.details["marker_wait_seconds"] = round(time.monotonic() - t0, 3)
    for row in marker.get("members") or [marker]:
        ctx.record_marker({**row, "group": marker.get("group"), "snapshot_set": marker.get("snapshot_set"),
                           "state": row.get("state")})
    if marker["state"] == "failed":
        raise ActionFailed(f"marker {marker['id']} failed: {marker.get('error')}")
    if marker["state"] != "applied":
        raise ActionTimeout(f"marker {marker['id']} was not applied within {wait:g}s")
    return marker
