"""Group markers at the destination: each member's applier arrives at the barrier and, until every
member has reached the marker, is suspended there (its stream neither read nor applied, and no
worker held: a group of hundreds of members waits on a pool of a few); the last one to arrive
enables the snapshot set and the others resume. Results are kept in node.db for late or repeated
arrivals."""

import json
import threading
from collections.abc import Callable

from ..storage.meta import Meta

# below the source's stream timeout (120 s by default; Targets takes half of a shorter one): a member
# waiting here sends no acknowledgement, and the source must not give up on the connection first
GROUP_TIMEOUT = 60.0
Later = Callable[[float, Callable[[], None]], object]  # Reactor.call_later


class GroupBarriers:
    """Members of a group marker wait here until all have reached it; the last one enables the
    snapshot set. A result, once known, is kept in the node's metadata for late or repeated arrivals."""

    def __init__(self, meta: Meta, later: Later, timeout: float = GROUP_TIMEOUT) -> None:
        self.meta, self.later, self.timeout = meta, later, timeout
        self.lock = threading.Lock()
        self.arrived: dict[str, set[str]] = {}  # guarded by lock, like the three below
        self.waiting: dict[str, list[Callable[[], None]]] = {}  # how to resume each suspended member
        self.enabling: set[str] = set()  # the last member is enabling the set (outside the lock)
        self.results: dict[str, dict] = {}

    def stored(self, key: str) -> dict | None:
        row = self.meta.one("SELECT result FROM applied_group_markers WHERE group_marker=?", key)
        return json.loads(row["result"]) if row else None

    def arrive(self, key: str, me: str, members: list[str], enable: Callable[[], dict],
               resume: Callable[[], None]) -> dict | None:
        """The group marker's result; or None while members are missing: the caller suspends, and
        ``resume`` is called (once, from another thread) when the result is known, to arrive again."""
        with self.lock:
            result = self.results.get(key) or self.stored(key)
            if result is not None:
                return result
            first = key not in self.arrived
            self.arrived.setdefault(key, set()).add(me)
            if not (self.arrived[key] >= set(members) and key not in self.enabling):
                self.waiting.setdefault(key, []).append(resume)
                if first:
                    self.later(self.timeout, lambda: self._expire(key, members))
                return None
            self.enabling.add(key)
        # the last member enables the set outside the lock: the enable takes storage locks and
        # fsyncs, and members of other group markers must not queue behind it
        try:
            result = enable()
        except Exception as e:  # noqa: BLE001 - the waiting members get the reason, not a hang
            result = {"state": "failed", "error": f"enabling the snapshot set failed: {e}"}
        with self.lock:
            self.enabling.discard(key)
            woken = self._finish(key, result)
        _resume(woken)
        return result

    def cancel(self, member: str, reason: str) -> None:
        """``member`` will not come (its destination was promoted): every group marker it has
        reached or waits for fails now, with ``reason``, and its waiters resume."""
        woken: list[Callable[[], None]] = []
        with self.lock:
            for key in [k for k, who in self.arrived.items() if member in who and k not in self.enabling]:
                woken += self._finish(key, {"state": "failed", "error": reason})
        _resume(woken)

    def _expire(self, key: str, members: list[str]) -> None:
        """The group's time is up: fail it, naming who did not come (an enable in progress is let finish)."""
        with self.lock:
            if key in self.results or key not in self.arrived:
                return
            if key in self.enabling:
                self.later(1.0, lambda: self._expire(key, members))
                return
            missing = sorted(set(members) - self.arrived[key])
            woken = self._finish(key, {"state": "failed", "error": f"group member(s) {', '.join(missing)} did not "
                                       f"reach the marker within {self.timeout:.0f}s"})
        _resume(woken)

    def _finish(self, key: str, result: dict) -> list[Callable[[], None]]:
        """Caller holds the lock; returns who to resume (outside it)."""
        self.results[key] = result
        self.arrived.pop(key, None)
        self.meta.execute("INSERT OR REPLACE INTO applied_group_markers VALUES (?,?)", key, json.dumps(result))
        return self.waiting.pop(key, [])


def _resume(woken: list[Callable[[], None]]) -> None:
    for resume in woken:
        resume()
