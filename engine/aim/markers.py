"""The source's ledger of markers: issuing them into AIM sets' write streams, recording what the
destination answered, and waiting for an answer. Rows in ``markers`` (node.db)."""

from __future__ import annotations

import threading
from collections.abc import Callable
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..errors import InvalidInput, NotFound
from ..storage.meta import Meta
from ..storage.names import Clock, check_label, iso, point_stamp

if TYPE_CHECKING:
    from .aimset import AimSet

MAX_LABEL = 100  # a point is named LABEL.TIMESTAMP, at most 128 characters


class Markers:
    def __init__(self, meta: Meta, clock: Clock) -> None:
        self.meta, self.clock = meta, clock
        self.waiters = threading.Condition()  # notified on every result
        self.listeners: list[Callable[[], None]] = []  # told of every result too (the API's long-polls)
        self._stamp_lock = threading.Lock()  # guards _last_stamp
        self._last_stamp: datetime | None = None

    def fail_unsequenced(self) -> None:
        """At load, after every journal was scanned (:meth:`sequenced`): markers whose row was
        committed but which never reached a journal."""
        self.meta.execute("UPDATE markers SET state='failed', error='lost in a crash before it was journaled' "
                          "WHERE state='issued' AND seq IS NULL")

    def lost(self, aim_set: str, journal_end: int) -> list[int]:
        """At load: markers journaled at or past ``journal_end``, which the disk did not keep
        (issued as the power went: their issue was never answered, an answered one was synced).
        The sender may have shipped one before that sync and the destination applied it, so they
        stay waiting until the next handshake asks the destination (:meth:`settle_lost`)."""
        return [r["id"] for r in self.meta.query("SELECT id FROM markers WHERE aim_set=? AND state='issued' AND "
                                                 "seq IS NOT NULL AND seq >= ?", aim_set, journal_end)]

    def settle_lost(self, ids: list[int]) -> None:
        """After a handshake gave the destination's results: the lost markers it did not apply
        never will be (the journal entry is gone)."""
        for marker_id in ids:
            self.result(marker_id, {"state": "failed", "error": "lost in a power loss before it was durable in the "
                                    "source's journal (the destination had not applied it)"})

    def fail_outstanding(self, aim_set: str, error: str, *, from_seq: int = 0, before_seq: int | None = None) -> None:
        """Fail the set's journaled markers still waiting, with sequence in [from_seq, before_seq)."""
        self.meta.execute("UPDATE markers SET state='failed', error=? WHERE aim_set=? AND state='issued' AND "
                          "seq IS NOT NULL AND seq >= ? AND seq < ?", error, aim_set, from_seq,
                          before_seq if before_seq is not None else 1 << 62)
        self._changed()

    def sequenced(self, marker_id: int, seq: int) -> None:
        """The marker is journal entry ``seq`` (also said at load for a marker that reached the
        journal just before a crash: the destination will apply it, so it must not be failed)."""
        self.meta.execute("UPDATE markers SET seq=? WHERE id=? AND seq IS NULL", seq, marker_id)

    def issue(self, sets: list[AimSet], *, snapshot: str | None = None, group: str | None = None,
              snapshot_set: str | None = None, label: str | None = None) -> list[dict]:
        """One marker in each set's journal (the caller holds their volume locks: one write-order point)."""
        check_label("marker", label, MAX_LABEL)
        if group is None and not snapshot:
            raise InvalidInput("a marker names the destination snapshot to enable (--snapshot)")
        now = self._issue_time()
        group_id = uuid.uuid4().hex if group else None
        rows = []
        for aim in sets:
            with self.meta.transaction() as db:
                cur = db.execute("INSERT INTO markers (aim_set, group_name, group_marker, snapshot, snapshot_set, "
                                 "label, state, issued_at) VALUES (?,?,?,?,?,?,?,?)",
                                 (aim.name, group, group_id, snapshot, snapshot_set, label, "issued", iso(now)))
                marker_id = cur.lastrowid
            if aim.record.overflowed:
                self.result(marker_id, {"state": "failed", "error": f"AIM set {aim.name!r} is resynchronising, "
                                        "tracking dirty blocks (its initial sync, the journal limit reached, or a "
                                        "restart after a power loss): markers resume after the resync"})
            else:
                payload: dict = {"id": marker_id, "snapshot": snapshot, "label": label, "point": point_stamp(now),
                                 "issued_at": iso(now)}
                if group:
                    payload["group"] = {"id": group_id, "name": group, "snapshot_set": snapshot_set,
                                        "members": [a.record.id for a in sets]}
                self.sequenced(marker_id, aim.observer.append_marker(payload))
            rows.append(self.marker(marker_id))
        return rows

    def _issue_time(self) -> datetime:
        """Now, but at least 1 ms after the previous marker: the destination names points by the
        millisecond, and two markers must never share a point name."""
        with self._stamp_lock:
            now = self.clock()
            if self._last_stamp is not None and now < self._last_stamp + timedelta(milliseconds=1):
                now = self._last_stamp + timedelta(milliseconds=1)
            self._last_stamp = now
            return now

    def result(self, marker_id: int, result: dict) -> None:
        self.meta.execute("UPDATE markers SET state=?, applied_at=?, point=?, error=? WHERE id=? AND state='issued'",
                          result["state"], result.get("applied_at"), result.get("point"), result.get("error"),
                          marker_id)
        self._changed()

    def _changed(self) -> None:
        with self.waiters:
            self.waiters.notify_all()
        for tell in list(self.listeners):
            tell()

    # -- reading ---------------------------------------------------------------------------------------
    def marker(self, marker_id: int | str) -> dict:
        try:
            number = int(marker_id)
        except (TypeError, ValueError):
            number = 0
        # An id past SQLite's 64-bit INTEGER would raise OverflowError in the query: it names no marker.
        row = self.meta.one("SELECT * FROM markers WHERE id=?", number) if 0 < number < 2 ** 63 else None
        if row is None:
            raise NotFound(f"marker {marker_id!r} does not exist")
        return row

    def group_marker(self, group_marker: str) -> dict:
        rows = self.meta.query("SELECT * FROM markers WHERE group_marker=? ORDER BY id", group_marker)
        if not rows:
            raise NotFound(f"group marker {group_marker!r} does not exist")
        states = {r["state"] for r in rows}
        state = "failed" if "failed" in states else ("issued" if "issued" in states else "applied")
        errors = sorted({r["error"] for r in rows if r["error"]})
        return {"id": group_marker, "group": rows[0]["group_name"], "snapshot_set": rows[0]["snapshot_set"],
                "state": state, "issued_at": rows[0]["issued_at"],
                "applied_at": max((r["applied_at"] or "" for r in rows), default=None) or None,
                "point": rows[0]["point"], "error": "; ".join(errors) or None, "members": rows}

    def show(self, ref: str) -> dict:
        return self.marker(ref) if str(ref).isdigit() else self.group_marker(ref)

    def wait(self, ref: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.waiters:
            while True:
                m = self.show(ref)
                left = deadline - time.monotonic()
                if m["state"] != "issued" or left <= 0:
                    return m
                self.waiters.wait(min(left, 1.0))

    def list(self, aim_set: str | None, limit: int) -> list[dict]:
        if aim_set:
            return self.meta.query("SELECT * FROM markers WHERE aim_set=? ORDER BY id DESC LIMIT ?", aim_set, limit)
        return self.meta.query("SELECT * FROM markers ORDER BY id DESC LIMIT ?", limit)

    def outstanding(self, aim_set: str) -> list[int]:
        """Journaled markers still waiting for the destination's answer (at most 1,000)."""
        return [r["id"] for r in self.meta.query("SELECT id FROM markers WHERE aim_set=? AND state='issued' AND "
                                                 "seq IS NOT NULL ORDER BY id LIMIT 1000", aim_set)]

    def last_applied(self, aim_set: str) -> dict | None:
        return self.meta.one("SELECT id, applied_at, point, snapshot, snapshot_set FROM markers WHERE aim_set=? "
                             "AND state='applied' ORDER BY id DESC LIMIT 1", aim_set)
