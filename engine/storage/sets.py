"""Snapshot sets: several snapshot relationships enabled together at one write-order point (a
consistency group at one node). Rows in ``snapshot_sets`` and ``snapshot_set_members``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import AlreadyExists, InvalidInput, NotFound
from .meta import Meta
from .names import Clock, check_name, iso

if TYPE_CHECKING:
    from .snapshots import CompleteImage, Differential, EnableResult


class SnapshotSets:
    """The snapshot-set verbs of :class:`~engine.storage.storage.Storage` (a mixin: it uses the
    storage's metadata, lock, clock, relationships and its one enable path)."""

    meta: Meta
    lock: threading.RLock
    clock: Clock

    def snapshot(self, name: str) -> CompleteImage | Differential: ...  # provided by Storage

    def _enable(self, rels: Sequence[CompleteImage | Differential], label: str | None) -> list[EnableResult]: ...

    def create_snapshot_set(self, name: str, members: list[str]) -> dict:
        check_name("snapshot set", name)
        if not members:
            raise InvalidInput(f"snapshot set {name!r} needs at least one member")
        if len(set(members)) != len(members):
            raise InvalidInput(f"snapshot set {name!r} lists a member twice")
        with self.lock:
            for m in members:
                self.snapshot(m)
            if self.meta.one("SELECT name FROM snapshot_sets WHERE name=?", name):
                raise AlreadyExists(f"snapshot set {name!r} already exists")
            with self.meta.transaction() as db:
                db.execute("INSERT INTO snapshot_sets (name, created_at) VALUES (?,?)", (name, iso(self.clock())))
                for i, m in enumerate(members):
                    db.execute("INSERT INTO snapshot_set_members VALUES (?,?,?)", (name, m, i))
            return self.snapshot_set_info(name)

    def _set_members(self, name: str) -> list[str]:
        if not self.meta.one("SELECT name FROM snapshot_sets WHERE name=?", name):
            raise NotFound(f"snapshot set {name!r} does not exist")
        return [r["snapshot"] for r in self.meta.query(
            "SELECT snapshot FROM snapshot_set_members WHERE set_name=? ORDER BY position", name)]

    def snapshot_set_info(self, name: str) -> dict:
        members = self._set_members(name)
        row = self.meta.one("SELECT * FROM snapshot_sets WHERE name=?", name) or {}
        return {"name": name, "members": members, "enables": row.get("enables", 0),
                "last_enabled_at": row.get("last_enabled_at"), "created_at": row.get("created_at")}

    def list_snapshot_sets(self) -> list[dict]:
        return [self.snapshot_set_info(r["name"]) for r in self.meta.query("SELECT name FROM snapshot_sets ORDER BY name")]

    def enable_snapshot_set(self, name: str, point: str | None = None) -> dict:
        members = self._set_members(name)
        results = self._enable([self.snapshot(m) for m in members], point)
        enabled_at = results[0].enabled_at
        self.meta.execute("UPDATE snapshot_sets SET enables=enables+1, last_enabled_at=? WHERE name=?",
                          enabled_at, name)
        points = {r.point for r in results if r.point}
        return {"snapshot_set": name, "enabled_at": enabled_at, "point": points.pop() if points else None,
                "members": [r.as_dict() for r in results]}

    def delete_snapshot_set(self, name: str) -> None:
        with self.lock:
            self._set_members(name)
            with self.meta.transaction() as db:
                db.execute("DELETE FROM snapshot_set_members WHERE set_name=?", (name,))
                db.execute("DELETE FROM snapshot_sets WHERE name=?", (name,))
