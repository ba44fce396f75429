"""The stall watchdog: an AIM set whose acknowledged position has not moved for ``stall_after``
while data is queued is `stalled`; that goes into the events (history), `status` and metrics.
An AIM set in state ``error`` (its destination refused to go on, and said why) is an
``aim_error`` event at once, one ``fenced`` (its destination was promoted: it is never applied
again) an ``aim_fenced`` event, and either is ``recovered`` when it replicates again."""

import logging
from collections.abc import Callable
from datetime import datetime

from engine import EngineError

from ..store import Store

log = logging.getLogger("aimsnap.watchdog")


class Watchdog:
    def __init__(self, store: Store, aim_sets: Callable[[], list[tuple[str, str]]],
                 node_sets: Callable[[str], list[dict]], stall_after: float = 300.0) -> None:
        """``node_sets(node)``: the status of every AIM set on that node (one call per node and
        round, however many sets it has: ``GET /v1/aim-sets``)."""
        self.store, self.aim_sets, self.node_sets, self.stall_after = store, aim_sets, node_sets, stall_after
        self.seen: dict[tuple[str, str], tuple[int, datetime]] = {}  # (node, set) -> (acked, since)
        self.stalled: set[tuple[str, str]] = set()
        self.errors: dict[tuple[str, str], tuple[str, str]] = {}  # (node, set) -> (error | fenced, the reason)
        self.infos: dict[tuple[str, str], dict] = {}  # (node, set) -> its last status (the status page)

    def check(self, now: datetime) -> set[tuple[str, str]]:
        listed: dict[str, dict[str, dict] | None] = {}  # node -> name -> status (None: unreachable)
        for key in self.aim_sets():
            node, name = key
            if node not in listed:
                listed[node] = self._list(node)
            info = (listed[node] or {}).get(name)
            if info is None:
                continue  # an unreachable node shows up as failed runs, not as a stall
            self.infos[key] = info
            self._error(key, info, now)
            acked, queued = info.get("acked_seq", 0), info.get("queued_entries", 0)
            prev = self.seen.get(key)
            if prev is None or prev[0] != acked or not queued:
                self.seen[key] = (acked, now)
                if key in self.stalled:
                    self.stalled.discard(key)
                    self.store.event(now, "recovered", f"AIM set {name} on {node} is moving again")
                continue
            if (now - prev[1]).total_seconds() >= self.stall_after and key not in self.stalled:
                self.stalled.add(key)
                msg = (f"AIM set {name} on {node} is stalled: {queued} entries queued, nothing acknowledged "
                       f"for {(now - prev[1]).total_seconds():.0f}s ({info.get('state')}"
                       + (f": {info['last_error']}" if info.get("last_error") else "") + ")")
                log.warning(msg)
                self.store.event(now, "stalled", msg, details={"node": node, "aim_set": name, "queued": queued})
        return set(self.stalled)

    def _list(self, node: str) -> dict[str, dict] | None:
        try:
            sets = self.node_sets(node)
        except EngineError:
            return None
        out: dict[str, dict] = {}
        for info in sets:  # a node lists the sets it is the source of first: those are the ones watched
            out.setdefault(info["name"], info)
        return out

    def last_seen(self) -> list[dict]:
        """What the last look saw of every AIM set (the status page's table)."""
        return [{"node": node, "aim_set": name, "state": i.get("state"), "role": i.get("role"),
                 "lag_seconds": i.get("lag_seconds"), "queued_bytes": i.get("queued_bytes"),
                 "last_error": i.get("last_error"), "stalled": (node, name) in self.stalled}
                for (node, name), i in sorted(self.infos.items())]

    def problems(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(state, reason) of every AIM set in state error or fenced now (the alert conditions)."""
        return dict(self.errors)

    def _error(self, key: tuple[str, str], info: dict, now: datetime) -> None:
        node, name = key
        if info.get("state") in ("error", "fenced"):
            reason = info.get("last_error") or "unknown"
            if self.errors.get(key) != (info["state"], reason):
                self.errors[key] = (info["state"], reason)
                fenced = info["state"] == "fenced"
                msg = (f"AIM set {name} on {node} is fenced, never applied again ({reason}): the destination "
                       "was failed over" if fenced else f"AIM set {name} on {node} cannot replicate: {reason}")
                log.warning(msg)
                self.store.event(now, "aim_fenced" if fenced else "aim_error", msg,
                                 details={"node": node, "aim_set": name, "reason": reason})
        elif key in self.errors and info.get("state") == "replicating":
            del self.errors[key]
            self.store.event(now, "recovered", f"AIM set {name} on {node} replicates again",
                             details={"node": node, "aim_set": name})
