"""dr-test: prove the newest recovery point at the DR site, unattended. Optionally first a
block-exact ``aim verify`` of each AIM set feeding it; then a writable clone of the point (every
member of a snapshot set at one point), the operator's check run against the clone's NBD URL,
and the clone deleted whatever happened (a crash mid-run leaves it for the next run to delete)."""

import time
import urllib.parse
from collections.abc import Callable

from engine import EngineError, NotFound
from policies.items import feeding_aim_sets

from . import ActionContext, ActionFailed
from .commands import command, last_line

VERIFY_POLL = 0.5
NBD_PORT = 10809


def run(ctx: ActionContext) -> None:
    p, b = ctx.policy, ctx.bundle
    api = ctx.nodes(p.node)
    snaps = [p.snapshot] if p.snapshot else [str(m) for m in b.resource("snapshot_set", p.node, p.snapshot_set)
                                             .spec["members"]]  # type: ignore[union-attr]
    if p.verify:
        volumes = [str(b.resource("snapshot", p.node, s).spec["source"]) for s in snaps]  # type: ignore[union-attr]
        ctx.details["verify"] = {a.name: verify(ctx, a.node, a.name) for a in feeding_aim_sets(b, p.node, volumes)}
    point = newest_point(api, snaps)
    clones = {s: clone_name(p.name, i, len(snaps)) for i, s in enumerate(snaps)}
    ctx.details.update(point=point, clones=list(clones.values()))
    try:
        for snap, clone in clones.items():
            _delete(api, clone)  # left by a run that died before its cleanup
            api.create_clone(clone, f"{snap}@{point}")
        if p.check_run:
            check(ctx, point, list(clones.values()))
    finally:
        for clone in clones.values():
            try:
                _delete(api, clone)
            except EngineError as e:  # said, and the next run tries again
                ctx.details.setdefault("cleanup_errors", []).append(str(e))


def follow_verify(replication, aim_set: str, repair: bool, limit: float,
                  progress: Callable[[dict], None] | None = None) -> dict:
    """Start a verify of ``aim_set`` and follow it until it ends or ``limit`` seconds pass; its status."""
    st = replication.verify(aim_set, repair)
    deadline = time.monotonic() + limit
    while st["state"] == "running" and time.monotonic() < deadline:
        if progress:
            progress(st)
        time.sleep(VERIFY_POLL)
        st = replication.verify_status(aim_set)
    return st


def verify(ctx: ActionContext, node: str, aim_set: str) -> dict:
    st = follow_verify(ctx.nodes(node).replication, aim_set, False, ctx.policy.timeout)
    if st["state"] != "done":
        raise ActionFailed(f"verify of AIM set {aim_set!r}: {st.get('error') or 'still running at the timeout'}")
    summary = {k: st[k] for k in ("mismatched_ranges", "ranges", "bytes_compared", "seconds")}
    if st["mismatched_ranges"]:
        raise ActionFailed(f"verify of AIM set {aim_set!r}: {st['mismatched_ranges']} range(s) differ between "
                           f"source and destination (`aimsnap aim verify {aim_set} --repair` fixes them)")
    return summary


def newest_point(api, snaps: list[str]) -> str:
    """The newest point every snapshot holds (a snapshot set enables all its members at one name)."""
    lists = [[pt["name"] for pt in api.snapshot_info(s)["points"]] for s in snaps]
    common = [n for n in lists[0] if all(n in other for other in lists[1:])]
    if not common:
        raise ActionFailed(f"no recovery point to test: {', '.join(snaps)} hold no point in time"
                           + (" in common" if len(snaps) > 1 else " yet"))
    return common[-1]


def clone_name(policy: str, index: int, count: int) -> str:
    return f"{policy[:50]}.test" + (f"{index + 1}" if count > 1 else "")


def check(ctx: ActionContext, point: str, clones: list[str]) -> None:
    p = ctx.policy
    urls = [f"nbd://{nbd_address(ctx)}/{c}" for c in clones]
    values = {"nbd_url": urls[0], "point": point, "clone": clones[0]}
    argv = tuple(_fill(arg, values) for arg in p.check_run)
    env = {"AIMSNAP_NBD_URL": urls[0], "AIMSNAP_NBD_URLS": " ".join(urls), "AIMSNAP_POINT": point,
           "AIMSNAP_CLONE": clones[0], "AIMSNAP_CLONES": " ".join(clones)}
    started = time.monotonic()
    code = command(argv, p.check_timeout, "check", ctx.details, env=env, stopping=ctx.stopping)
    ctx.details["check"]["seconds"] = round(time.monotonic() - started, 3)
    if code != 0:
        raise ActionFailed(f"the check of {point} failed (exit {code}): {last_line(ctx.details['check'])}")


def nbd_address(ctx: ActionContext) -> str:
    """The node's NBD address as declared, or its API's host on the standard NBD port."""
    spec = ctx.bundle.nodes[ctx.policy.node]
    if spec.nbd:
        return spec.nbd
    host = urllib.parse.urlsplit(spec.api).hostname or "127.0.0.1"
    return f"[{host}]:{NBD_PORT}" if ":" in host else f"{host}:{NBD_PORT}"


def _fill(arg: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


def _delete(api, clone: str) -> None:
    try:
        api.delete_clone(clone, True)
    except NotFound:
        pass
