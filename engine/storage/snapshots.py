"""Snapshot relationships: complete-image (a full copy, incremented) and differential
(copy-on-write points in time).

Enabling is split in two so that a snapshot set can enable many relationships at one
write-order point: :meth:`begin_enable` runs under the source volume's lock and is O(1);
:meth:`finish_enable` does the copying afterwards while writes continue. A write that lands on a
block not yet copied first copies it (the relationship is a :class:`~engine.volume.WriteObserver`),
so the result equals the source at the enable instant.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .bitmap import BlockBitmap, count_bits, runs
from ..errors import Conflict, NotFound
from .fsutil import copy_range
from .meta import Meta
from .volume import Volume, WriteIntent, pread_all

if TYPE_CHECKING:
    from .clones import Clone

OPEN_OLDER = 16  # per differential: older points whose map and data file stay open once read
_COPY_RUN_BLOCKS = 256  # 16 MiB at 64 KiB blocks: long enough to stream, short enough to not stall writes


@dataclass
class EnableResult:
    snapshot: str
    type: str
    enabled_at: str
    point: str | None = None
    blocks: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class CompleteImage:
    """A full copy of the source in a volume of its own, brought up to date by increments."""

    type = "complete-image"
    kind = "snapshot"

    def __init__(self, name: str, source: Volume, image: Volume, dirty: BlockBitmap, meta: Meta,
                 state: str) -> None:
        self.name, self.source, self.image, self.dirty, self.meta = name, source, image, dirty, meta
        self.state = state  # new | ready | incrementing (left so by a crash: the image is incomplete)
        self.pending: bytearray | None = None
        self.enable_lock = threading.Lock()
        self._result: EnableResult | None = None

    # -- write path of the source --------------------------------------------------------------
    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        for intent in batch:
            self.dirty.mark(intent.first, intent.last)
            if self.pending is not None:
                self._copy_pending(intent.first, intent.last - intent.first + 1)

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        pass

    def write_failed(self, batch: Sequence[WriteIntent]) -> None:
        pass  # the dirty bits stay: an increment copies a block that did not change, no harm

    def flush(self) -> None:
        self.dirty.sync()

    # -- enabling -------------------------------------------------------------------------------
    def begin_enable(self, now: str, point: str | None = None) -> None:
        """Fix the image's content at this instant (caller holds the source lock)."""
        self.pending = self.dirty.take()
        self.state = "incrementing"
        self.meta.execute("UPDATE snapshots SET state='incrementing' WHERE name=?", self.name)
        self._result = EnableResult(self.name, self.type, now, blocks=count_bits(self.pending))

    def finish_enable(self) -> EnableResult:
        """Copy the blocks that changed since the last enable, then make the image durable."""
        assert self.pending is not None and self._result is not None
        started = time.monotonic()
        for first, count in runs(self.pending, self.source.nblocks, _COPY_RUN_BLOCKS):
            with self.source.lock:
                self._copy_pending(first, count)
        self.image.flush()
        with self.source.lock:
            self.dirty.save()  # only now forget the copied blocks: the image holds them durably
            self.pending = None
        result, self._result = self._result, None
        self.meta.execute("UPDATE snapshots SET state='ready', enables=enables+1, last_enabled_at=? "
                          "WHERE name=?", result.enabled_at, self.name)
        self.state = "ready"
        result.bytes = min(result.blocks * self.source.block_size, self.source.size)
        result.seconds = time.monotonic() - started
        return result

    def _copy_pending(self, first: int, count: int) -> None:
        """Copy the still-pending blocks of ``first..first+count-1`` (caller holds the source lock)."""
        pending, bs = self.pending, self.source.block_size
        assert pending is not None
        b, end = first, first + count
        while b < end:
            if not pending[b >> 3] & (1 << (b & 7)):
                b += 1
                continue
            start = b
            while b < end and pending[b >> 3] & (1 << (b & 7)):
                pending[b >> 3] &= ~(1 << (b & 7)) & 0xFF
                b += 1
            offset = start * bs
            self.image.copy_in(self.source, offset, min(b * bs, self.source.size) - offset)

    # -- reading ------------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        if self.state == "incrementing" and self.pending is None:
            raise Conflict(f"snapshot {self.name!r} is incomplete (an increment was interrupted): "
                           "enable it again to complete it")
        if self.state == "new":
            raise Conflict(f"snapshot {self.name!r} has never been enabled")
        self.image.check_range(offset, length)
        with self.source.lock:
            if self.pending is None:
                return self.image.read(offset, length)
            # mid-increment: blocks not copied yet are still unchanged on the source
            pending, bs = self.pending, self.source.block_size
            return read_pieces(offset, length, bs, lambda b: self.source if pending[b >> 3] & (1 << (b & 7))
                                else self.image)

    def info(self) -> dict:
        return {"pending_blocks": count_bits(self.pending) if self.pending is not None else 0,
                "dirty_blocks": self.dirty.count(), "image": self.image.name,
                "consistent": self.state == "ready" or self.pending is not None}

    def close(self) -> None:
        self.dirty.close()


class Point:
    """One point in time of a differential snapshot: the blocks overwritten since it was enabled,
    kept at their own offsets in a sparse file, with a presence map.

    The map and the data file are opened when first needed: a node keeps tens of thousands of
    points and reads few of them, and opening every one at start cost two descriptors and a map
    read each. Closed again by its relationship (:meth:`Differential.trim`, when an operation is
    done with its points), always under the source volume's lock, as every other use is."""

    def __init__(self, name: str, seq: int, created_at: str, data_path: str, map_path: str, nblocks: int,
                 present: BlockBitmap | None = None) -> None:
        self.name, self.seq, self.created_at = name, seq, created_at
        self.data_path, self.map_path, self.nblocks = data_path, map_path, nblocks
        self._present, self._fd = present, None
        self._stored: int | None = None  # the map's count while it is closed
        self.on_open: Callable[[Point], None] = lambda p: None

    @property
    def present(self) -> BlockBitmap:
        if self._present is None:
            self._present = BlockBitmap(self.map_path, self.nblocks)
            self.on_open(self)
        return self._present

    @property
    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.data_path, os.O_RDWR)
            self.on_open(self)
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._present is not None or self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        present = self._present
        if present is not None:
            self._stored = present.count()
            self._present = None
            present.close()

    def stored_blocks(self) -> int:
        present = self._present
        if present is not None:
            return present.count()
        if self._stored is None:  # counted from the file once, without keeping it open
            with open(self.map_path, "rb") as f:
                self._stored = count_bits(f.read())
        return self._stored

    def info(self) -> dict:
        return {"name": self.name, "seq": self.seq, "created_at": self.created_at,
                "stored_blocks": self.stored_blocks()}


class Differential:
    """Copy-on-write points in time of a volume.

    Only the newest point takes copies: the content of block b at point i is the copy held by the
    first point at or after i that holds b, or else the live volume.
    """

    type = "differential"
    kind = "snapshot"

    def __init__(self, name: str, source: Volume, points: list[Point], meta: Meta) -> None:
        self.name, self.source, self.points, self.meta = name, source, points, meta
        self.enable_lock = threading.Lock()
        self.state = "ready" if points else "new"
        self._result: EnableResult | None = None
        self._open: OrderedDict[int, Point] = OrderedDict()  # older points open now, least recently used first
        for p in points:
            p.on_open = self.opened

    def opened(self, point: Point) -> None:
        """A point opened its map or data file (under the source lock)."""
        if not (self.points and point is self.points[-1]):  # the newest takes every copy: it stays open
            self._open[point.seq] = point
            self._open.move_to_end(point.seq)

    def trim(self, keep: Sequence[Point] = ()) -> None:
        """Keep at most :data:`OPEN_OLDER` older points open besides ``keep`` (what the operation
        just used: a read of an old point needs every newer point's map, and the next read of it
        the same ones), closing those used longest ago. Called where an operation is done with
        its points (under the source lock), never in the middle of one."""
        kept = {p.seq for p in keep if p.seq in self._open}
        for seq in kept:
            self._open.move_to_end(seq)
        excess = len(self._open) - len(kept) - OPEN_OLDER
        for seq in list(self._open):
            if excess <= 0:
                break
            if seq not in kept:
                self._open.pop(seq).close()
                excess -= 1

    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        if self.points:
            preserve(self.source, self.points[-1], batch)

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        pass

    def write_failed(self, batch: Sequence[WriteIntent]) -> None:
        pass  # the preserved copies stay: the blocks still hold what they copied

    def flush(self) -> None:
        pass  # copies are made durable before the write they protect lands (see preserve)

    def begin_enable(self, now: str, point: Point) -> None:
        if self.points:  # the newest until now takes no more copies: closed until a read needs it
            self.points[-1].close()
        point.on_open = self.opened
        self.points.append(point)
        self.state = "ready"
        self._result = EnableResult(self.name, self.type, now, point=point.name)

    def finish_enable(self) -> EnableResult:
        result, self._result = self._result, None
        assert result is not None
        return result

    def find(self, name: str) -> int:
        for i, p in enumerate(self.points):
            if p.name == name:
                return i
        return -1

    def read(self, point: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of point ``point`` (found under the source lock: a
        delete moves the indexes and closes the point it removes under that lock)."""
        self.source.check_range(offset, length)
        with self.source.lock:
            index = self.find(point)
            if index < 0:
                raise NotFound(f"point in time {self.name}@{point} does not exist")
            return self._read(self.points[index:], offset, length)

    def _read(self, newer: list[Point], offset: int, length: int) -> bytes:

        def holder(b: int) -> Volume | Point:
            for p in newer:
                if p.present.test(b):
                    return p
            return self.source

        try:
            return read_pieces(offset, length, self.source.block_size, holder)
        finally:
            self.trim(keep=newer)  # the next read of this point needs the same maps: no thrashing

    def remove_point(self, index: int) -> Point:
        """Detach a point, first handing the blocks its predecessor still needs to it (caller
        holds the source lock and deletes the row and files afterwards)."""
        point = self.points[index]
        if index > 0:
            prev = self.points[index - 1]
            needed = bytearray(a & ~b & 0xFF for a, b in zip(point.present.bits, prev.present.bits))
            bs, size = self.source.block_size, self.source.size
            for first, count in runs(needed, self.source.nblocks, _COPY_RUN_BLOCKS):
                copy_range(point.fd, prev.fd, first * bs, min((first + count) * bs, size) - first * bs)
            os.fdatasync(prev.fd)
            for first, count in runs(needed, self.source.nblocks, _COPY_RUN_BLOCKS):
                prev.present.mark(first, first + count - 1)
            prev.present.sync()
        del self.points[index]
        self._open.pop(point.seq, None)
        self.trim()
        return point

    def info(self) -> dict:
        return {"points": [p.info() for p in self.points]}

    def close(self) -> None:
        for p in self.points:
            p.close()


def preserve(source: Volume, point: Point | Clone, batch: Sequence[WriteIntent]) -> None:
    """Copy the blocks the batch touches that ``point`` (a point in time, or a clone observing
    ``source``) does not hold yet, durably (one ``fdatasync`` per batch), before the writes that
    would overwrite them."""
    bs, size = source.block_size, source.size
    todo = sorted({b for i in batch for b in range(i.first, i.last + 1) if not point.present.test(b)})
    if not todo:
        return
    for b in todo:
        copy_range(source.fd, point.fd, b * bs, min(bs, size - b * bs))
    os.fdatasync(point.fd)
    for b in todo:
        point.present.mark(b, b)
    point.present.sync()


def read_pieces(offset: int, length: int, bs: int, holder: Callable[[int], object],
                read: Callable[[object, int, int], bytes] | None = None) -> bytes:
    """Read a range block by block from whichever holder holds each block, coalescing neighbours:
    ``read(holder, offset, length)``, by default ``pread`` of the holder's ``fd``."""
    out = bytearray()
    pos, end = offset, offset + length
    while pos < end:
        b = pos // bs
        src = holder(b)
        stop = min((b + 1) * bs, end)
        while stop < end and holder(stop // bs) is src:
            stop = min(stop + bs, end)
        out += read(src, pos, stop - pos) if read else pread_all(src.fd, stop - pos, pos)  # type: ignore[attr-defined]
        pos = stop
    return bytes(out)
