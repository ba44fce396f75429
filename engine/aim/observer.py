"""The AIM set's write path: a write observer of the source volume.

Every write is appended to the journal before it lands (or, past the journal limit, marked in a
dirty bitmap); after it lands, :meth:`JournalObserver.publish` tells the sender how far it may
ship. Replay after a crash re-applies what the journal holds beyond the last checkpoint. Runs
under the source volume's lock (the write path holds it); never does network IO.
"""

import json
import logging
import time
from collections.abc import Callable, Sequence

from ..storage.bitmap import BlockBitmap
from ..storage.fsutil import data_extents
from ..storage.meta import Meta
from ..storage.units import format_size
from ..storage.volume import Volume, WriteIntent, pread_all
from . import frames
from .backlog import Backlog
from .journal import Entry, Journal
from .state import Record

log = logging.getLogger("aimsnap.aim")


class JournalObserver:
    kind = "AIM set"

    def __init__(self, record: Record, volume: Volume, journal: Journal, dirty: BlockBitmap, meta: Meta,
                 on_overflow: Callable[[list[int]], None]) -> None:
        self.name, self.record, self.volume, self.journal, self.dirty = record.name, record, volume, journal, dirty
        self.meta, self.on_overflow = meta, on_overflow
        self.backlog = Backlog(journal, record.acked_seq)
        self.replaying = False
        self._pending: tuple[int, int, int] | None = None  # (first seq, entries, bytes) of the batch landing
        self.epoch = 0  # bumped by an overflow: the sender drops what it is doing
        self.waiter: Callable[[], None] | None = None  # the sender, when it has shipped everything
        self.publish()

    # -- the write path ------------------------------------------------------------------------------
    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        if self.replaying:
            return
        rec = self.record
        if rec.overflowed:
            for intent in batch:
                rec.bytes_written += intent.length
                self.dirty.mark(intent.first, intent.last)
            return
        entries: list[Entry] = []
        for intent in batch:
            rec.bytes_written += intent.length
            if intent.data is not None:
                entries.append((frames.WRITE, intent.offset, intent.data, -1))
            elif intent.source is not None:  # an increment copying into this (snapshot) volume
                data = pread_all(intent.source.fd, intent.length, intent.offset)
                entries.append((frames.WRITE, intent.offset, data, -1))
            else:
                entries.append((frames.ZERO, intent.offset, b"", intent.length))
        now = time.time_ns()
        first = self.journal.next_seq
        _seq, size = self.journal.append_many(entries, now)  # a failed append leaves nothing behind
        self._pending = (first, len(entries), size)
        self.backlog.appended(len(entries), size, now)
        if self.backlog.bytes > rec.journal_limit:
            self.overflow()

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        if not self.replaying:
            self._pending = None
            self.publish()

    def write_failed(self, batch: Sequence[WriteIntent]) -> None:
        """The batch did not land in the volume: its entries must never be shipped or replayed
        (the host was told the write failed), so the journal takes them back."""
        pending, self._pending = self._pending, None
        if self.replaying or pending is None or self.record.overflowed:
            return  # dirty bits (overflow) over-report, which is safe
        first, count, size = pending
        if self.journal.next_seq == first + count:
            self.journal.unappend(first, size)
            self.backlog.appended(-count, -size, 0)

    def append_marker(self, payload: dict) -> int:
        """A marker into the write stream (caller holds the volume lock); its sequence number."""
        now = time.time_ns()
        seq, size = self.journal.append(frames.MARKER, 0, json.dumps(payload).encode(), now)
        self.publish()  # a marker has no data to land
        self.backlog.appended(1, size, now)
        return seq

    def publish(self) -> None:
        """What the sender may ship: every entry up to here has its data in the volume too (an
        entry whose volume write failed is never sent). One attribute, so the sender reads it
        without the volume lock, which the write path holds."""
        tail = self.journal.segments[-1] if self.journal.segments else None
        self.landed = (self.journal.next_seq - 1, tail.first if tail else 0, tail.size if tail else 0)
        waiter = self.waiter  # only a sender that waits is woken: a wake per write costs IOPS
        if waiter is not None:
            self.waiter = None
            waiter()

    def flush(self) -> None:
        self.journal.sync()
        self.dirty.sync()

    def overflow(self) -> None:
        """Past the journal limit (caller holds the volume lock): turn every unacknowledged entry
        into dirty bits, drop the journal, and track further writes in the bitmap until a resync."""
        failed = []
        rec = self.record
        for frame, _raw in self.journal.read_from(rec.acked_seq + 1):
            if frame.type in (frames.WRITE, frames.ZERO):
                bs = self.volume.block_size
                self.dirty.mark(frame.offset // bs, (frame.offset + max(frame.size, 1) - 1) // bs)
            elif frame.type == frames.MARKER and "id" in (m := json.loads(frame.payload)):  # not a verify's
                failed.append(m["id"])
        self.dirty.sync()
        self.journal.reset(self.journal.next_seq)
        self.publish()
        rec.overflowed, rec.resync_from = True, None
        rec.checkpoint_seq = self.journal.next_seq - 1
        self.backlog.clear()
        rec.save(self.meta)
        self.epoch += 1
        log.warning("aim %s: journal over its limit of %s: tracking dirty blocks until a resync",
                    self.name, format_size(rec.journal_limit))
        self.on_overflow(failed)

    def track_all(self) -> None:
        """Every written block is dirty (the page cache was lost: trust nothing, resync)."""
        vol = self.volume
        with vol.lock:
            for s, e in data_extents(vol.fd, vol.size):
                self.dirty.mark(s // vol.block_size, (e - 1) // vol.block_size)
        self.record.overflowed = True
        self.record.save(self.meta)

    # -- replay after a crash -------------------------------------------------------------------------
    def replay(self, marker: Callable[[int, int], None]) -> int:
        """Re-apply journal entries after the last checkpoint: a kill may have come between an
        entry reaching the journal and its data reaching the volume. Idempotent, in order.
        ``marker(id, seq)`` is told of each marker entry found (its row may lack the seq)."""
        count = 0
        self.replaying = True
        try:
            for frame, _raw in self.journal.read_from(self.record.checkpoint_seq + 1):
                if frame.type == frames.WRITE:
                    self.volume.apply_write(frame.offset, frame.payload)
                elif frame.type == frames.ZERO:
                    self.volume.apply_zeroes(frame.offset, frame.length)
                elif frame.type == frames.MARKER and "id" in (m := json.loads(frame.payload)):  # not a verify's
                    marker(m["id"], frame.seq)
                count += 1
        finally:
            self.replaying = False
        if count:
            self.volume.flush()
        self.checkpoint()
        return count

    def checkpoint(self) -> None:
        """Everything journaled so far is in the volume and durable (caller flushed it)."""
        self.record.checkpoint_seq = self.journal.next_seq - 1
        self.record.save(self.meta)
