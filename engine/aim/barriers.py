"""Group markers at the destination: every member's applier waits at the barrier until all have
reached the marker; the last one enables the snapshot set. Results are kept in node.db for late
or repeated arrivals."""

import json
import threading
import time
from collections.abc import Callable

from ..storage.meta import Meta

# below the source's stream timeout (sender.STREAM_TIMEOUT, 120 s): a member waiting here sends no
# acknowledgement, and the source must not give up on the connection first
GROUP_TIMEOUT = 60.0


class GroupBarriers:
    """Members of a group marker wait here until all have reached it; the last one enables the
    snapshot set. A result, once known, is kept in the node's metadata for late or repeated arrivals."""

    def __init__(self, meta: Meta, timeout: float = GROUP_TIMEOUT) -> None:
        self.meta, self.timeout = meta, timeout
        self.cond = threading.Condition()
        self.arrived: dict[str, set[str]] = {}  # guarded by cond, like the two below
        self.enabling: set[str] = set()  # the last member is enabling the set (outside cond)
        self.results: dict[str, dict] = {}

    def stored(self, key: str) -> dict | None:
        row = self.meta.one("SELECT result FROM applied_group_markers WHERE group_marker=?", key)
        return json.loads(row["result"]) if row else None

    def arrive(self, key: str, me: str, members: list[str], enable: Callable[[], dict]) -> dict:
        with self.cond:
            result = self.results.get(key) or self.stored(key)
            if result is not None:
                return result
            self.arrived.setdefault(key, set()).add(me)
            if not (self.arrived[key] >= set(members) and key not in self.enabling):
                return self._wait(key, members)
            self.enabling.add(key)
        # the last member enables the set outside the condition: the enable takes storage locks
        # and fsyncs, and members of other group markers must not queue behind it
        try:
            result = enable()
        except Exception as e:  # noqa: BLE001 - the waiting members get the reason, not a hang
            result = {"state": "failed", "error": f"enabling the snapshot set failed: {e}"}
        with self.cond:
            self.enabling.discard(key)
            self._finish(key, result)
        return result

    def cancel(self, member: str, reason: str) -> None:
        """``member`` will not come (its destination was promoted): every group marker it has
        reached or waits for fails now, with ``reason``, and its waiters go."""
        with self.cond:
            for key in [k for k, who in self.arrived.items() if member in who and k not in self.enabling]:
                self._finish(key, {"state": "failed", "error": reason})

    def _wait(self, key: str, members: list[str]) -> dict:
        """Caller holds the condition: wait for the last member's result, or time out."""
        deadline = time.monotonic() + self.timeout
        while key not in self.results:
            left = deadline - time.monotonic()
            if left <= 0 and key not in self.enabling:  # an enable in progress is waited for
                missing = sorted(set(members) - self.arrived[key])
                self._finish(key, {"state": "failed", "error": f"group member(s) {', '.join(missing)} did not "
                                   f"reach the marker within {self.timeout:.0f}s"})
                break
            self.cond.wait(max(left, 0.1))
        return self.results[key]

    def _finish(self, key: str, result: dict) -> None:
        self.results[key] = result
        self.arrived.pop(key, None)
        self.meta.execute("INSERT OR REPLACE INTO applied_group_markers VALUES (?,?)", key, json.dumps(result))
        self.cond.notify_all()
