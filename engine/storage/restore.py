"""Restoring a volume to a recovery point, in place, copying only the blocks that differ.

The blocks that changed since point ``P`` of a differential snapshot are exactly those some point
from ``P`` on holds (each point keeps the blocks overwritten while it was the newest); since a
complete image's increment, those its dirty bitmap marks. Only they are copied, through the
volume's own write path: an AIM set replicates them like any write, and the ``pre-restore`` point
taken first on every differential snapshot of the volume preserves what they overwrite, so a wrong
restore can be undone by restoring that point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import Conflict, InvalidInput, NotFound
from .bitmap import count_bits, runs, union
from .hosts import Hosts
from .names import Clock, point_stamp
from .snapshots import CompleteImage, Differential, EnableResult
from .volume import Volume, pread_all

RUN_BLOCKS = 256  # a batch of the write path: long enough to stream, short enough not to stall hosts


class Restore:
    """The restore verb of :class:`~engine.storage.storage.Storage` (a mixin)."""

    lock: threading.RLock
    clock: Clock
    snapshots: dict[str, CompleteImage | Differential]
    hosts: Hosts

    def volume(self, name: str) -> Volume: ...  # provided by Storage

    def snapshot(self, name: str) -> CompleteImage | Differential: ...

    def _enable(self, rels: list, label: str | None) -> list[EnableResult]: ...

    def restore_volume(self, name: str, origin: str, force: bool = False) -> dict:
        started = time.monotonic()
        vol = self.volume(name)
        rel, point = self._origin(vol, origin)
        if not vol.host_writable:
            vol.check_host_write(0, 0)  # raises the reason (an AIM destination, a snapshot's volume)
            raise Conflict(f"volume {name!r} is not writable by hosts")
        if self.hosts.count(name) and not force:
            raise Conflict(f"volume {name!r} is open by {self.hosts.count(name)} NBD client(s): stop them "
                           "(their caches would not know the volume changed), or restore with --force")
        return self._roll_back(vol, rel, origin, point, started, vol.write_many)

    def roll_back(self, vol: Volume, origin: str) -> dict:
        """Restore a volume that hosts may not write (a destination being promoted): the same
        copy, as replication writes."""
        rel, point = self._origin(vol, origin)
        return self._roll_back(vol, rel, origin, point, time.monotonic(), vol.apply_writes)

    def _origin(self, vol: Volume, origin: str) -> tuple[CompleteImage | Differential, str]:
        """The relationship and point ``origin`` (SNAPSHOT@POINT, or a complete image) names, of ``vol``."""
        snap, _, point = origin.partition("@")
        rel = self.snapshot(snap)
        if rel.source is not vol:
            raise InvalidInput(f"{origin!r} is a snapshot of {rel.source.name!r}, not of {vol.name!r}")
        if isinstance(rel, CompleteImage):
            if point:
                raise InvalidInput(f"snapshot {snap!r} is complete-image: restore from it without @POINT")
            if rel.state != "ready" or rel.pending is not None:
                raise Conflict(f"snapshot {snap!r} is not a complete image now (never enabled, or incrementing)")
        elif not point or rel.find(point) < 0:
            raise NotFound(f"point in time {origin!r} does not exist" if point else
                           f"snapshot {snap!r} is differential: name a point in time, {snap}@POINT")
        return rel, point

    def _roll_back(self, vol: Volume, rel: CompleteImage | Differential, origin: str, point: str, started: float,
                   write: Callable[[list[tuple[int, bytes]]], None]) -> dict:
        with self.lock:
            diffs = sorted((r for r in self.snapshots.values() if isinstance(r, Differential) and r.source is vol),
                           key=lambda r: r.name)
        protected = self._enable(diffs, f"pre-restore.{point_stamp(self.clock())}") if diffs else []
        with rel.enable_lock:  # the origin stays put: no delete of its point, no increment of its image
            return self._copy_back(vol, rel, origin, point, protected, started, write)

    def _copy_back(self, vol: Volume, rel: CompleteImage | Differential, origin: str, point: str,
                   protected: list[EnableResult], started: float,
                   write: Callable[[list[tuple[int, bytes]]], None]) -> dict:
        if self.snapshots.get(rel.name) is not rel or (isinstance(rel, Differential) and rel.find(point) < 0):
            raise NotFound(f"{origin!r} was deleted before the restore began (the pre-restore points stay)")
        with vol.lock:  # which blocks differ, as of now (a host writing meanwhile is its own business)
            if isinstance(rel, CompleteImage):
                changed = bytearray(rel.dirty.bits)
            else:
                changed = union(*(p.present.bits for p in rel.points[rel.find(point):]))
        bs, copied = vol.block_size, 0
        batch: list[tuple[int, bytes]] = []
        blocks = 0
        for first, count in runs(changed, vol.nblocks, RUN_BLOCKS):
            offset = first * bs
            length = min((first + count) * bs, vol.size) - offset
            if isinstance(rel, CompleteImage):
                data = pread_all(rel.image.fd, length, offset)
            else:
                data = rel.read(point, offset, length)  # there: deletes wait for the enable lock
            batch.append((offset, data))
            copied, blocks = copied + length, blocks + count
            if blocks >= RUN_BLOCKS:  # one batch of the write path: one fdatasync of the pre-restore point
                write(batch)
                batch, blocks = [], 0
        if batch:
            write(batch)
        vol.flush()
        return {"volume": vol.name, "from": origin, "blocks": count_bits(changed), "bytes": copied,
                "pre_restore_points": [f"{r.snapshot}@{r.point}" for r in protected],
                "seconds": round(time.monotonic() - started, 3)}
