"""The source side of one AIM connection, over a :class:`~.wire.Connection`.

:meth:`Sender.step`, a blocking job, begins one connection's life: connect and authenticate,
take the results of markers whose acknowledgement was lost, resynchronise if needed (copying
only dirty blocks). Then the set streams the journal from the destination's durable position in
*turns* on the node's reactor: each reads the acknowledgements that came and ships at most
``TURN_BYTES``, and a set with nothing to ship holds no thread (its connection is parked until an
acknowledgement, a write or the heartbeat's time wakes it). A fault ends the session and the
:class:`~.supervisor.Supervisor` around it reports the fault and retries with backoff.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..net.reactor import Reactor, Task
from ..storage.bitmap import runs
from ..storage.fsutil import data_extents
from ..storage.volume import pread_all
from . import frames, wire
from .journal import Cursor
from .state import State
from .wire import Connection, DestinationError, WireError

if TYPE_CHECKING:
    from .aimset import AimSet

log = logging.getLogger("aimsnap.aim")
HEARTBEAT_SECONDS = 2.0
RESYNC_RUN_BLOCKS = 64
TURN_BYTES = 4 << 20  # one turn ships at most this (one journal chunk), then the other sets' turns run
SMALL_BATCH = 1 << 20
BATCH_DELAY = 0.002
STREAM_TIMEOUT = 120.0  # the default (node serve --aim-stream-timeout): the destination answers a heartbeat well within it
ACK_PERSIST_SECONDS = 1.0
# the backoff starts over only when the set proves it works: an acknowledgement beyond where the
# session began, a completed resync, or a stream up this long. A handshake proves nothing: a fault
# right after it (the destination refusing, the source's own storage failing) would otherwise retry
# ten times a second forever
STEADY_SECONDS = 10.0
Connect = Callable[[], Connection]


@dataclass
class Session:
    """One connection's streaming phase: where the journal is read from, and its clocks."""

    conn: Connection
    cursor: Cursor
    epoch: int
    steady_at: float | None  # when an unbroken stream counts as healthy (then None)
    sent_at: float  # the last frame sent (a heartbeat follows a quiet HEARTBEAT_SECONDS)
    heard_at: float  # the destination's last frame: silence for the stream timeout ends the session
    range_bytes: int = 0  # bytes of the journal range being shipped, across turns
    pending: deque = field(default_factory=deque)  # queued for the socket (Connection.send_pending)


class Sender:
    def __init__(self, aim: AimSet, connect: Connect, reactor: Reactor, *, heartbeat: float = HEARTBEAT_SECONDS,
                 timeout: float = STREAM_TIMEOUT, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.aim, self.connect, self.reactor, self.heartbeat, self.monotonic = aim, connect, reactor, heartbeat, monotonic
        self.timeout = timeout  # the destination's silence that ends a session
        self.obs = aim.observer
        self.conn: Connection | None = None
        self.session: Session | None = None
        self.task = Task(reactor, self._turn)
        self._progress_from: int | None = None  # acked at the session's start: an ack beyond it is progress
        self._refused = False  # the last attempt ended in the destination's refusal (DestinationError)
        self._persisted_at = 0.0

    @property
    def active(self) -> bool:
        return not (self.aim.closing or self.aim.record.paused)

    def drop(self) -> None:
        """Cut the current connection (pause, overflow, stop): the session's IO fails at once."""
        if self.conn is not None:
            self.conn.shutdown()

    # -- one connection: the handshake and the resync, a blocking job ------------------------------------
    def step(self) -> float | None:
        """Connect, authenticate, take the results of markers whose acknowledgement was lost,
        resynchronise if needed; then stream, in turns (None: the session tells the supervisor
        when it ends). Else the seconds until the next attempt."""
        aim = self.aim
        if aim.record.fenced:  # never again: an operator's role change (failback) or delete ends it
            aim.state = State.FENCED
            return 60.0
        if aim.record.paused:
            aim.state = State.PAUSED
            return 60.0  # set_paused wakes the supervisor
        if aim.closing:
            return 60.0
        conn = self.connect()
        self.conn = conn
        try:
            try:
                asked = aim.markers.outstanding(aim.name)
                answer = wire.client_handshake(conn.sock, aim.token, {
                    "op": "stream", "set_id": aim.record.id, "set_name": aim.name,
                    "generation": aim.record.generation, "aim_port": aim.local_port,
                    # markers the destination may have applied while their acknowledgement was lost
                    "outstanding_markers": asked})
            except wire.Fenced as e:
                self.fenced(e)
                self._closed(conn, None)
                return 0.0
            for result in answer.get("marker_results", []):
                aim.markers.result(result["id"], result)
            settled = set(asked)  # only those the destination was asked about (at most 1,000 a time)
            aim.markers.settle_lost([i for i in aim.lost_markers if i in settled])
            aim.lost_markers = [i for i in aim.lost_markers if i not in settled]
            conn.settimeout(self.timeout)
            self.begin(conn, int(answer.get("applied_seq", 0)), bool(answer.get("resyncing")))
        except BaseException as e:
            self._closed(conn, e if self.active else None)
            if not self.active:
                return 0.0  # paused or closing cut the connection: not a fault
            raise
        return None

    def _closed(self, conn: Connection, failure: BaseException | None) -> None:
        """The connection is done with: close it and say what the set is now."""
        aim = self.aim
        self.conn = None
        self.reactor.forget(conn.sock)
        conn.close()
        self._refused = isinstance(failure, DestinationError)
        if aim.record.fenced:
            aim.state = State.FENCED
        elif not aim.record.paused:
            aim.state = State.ERROR if self._refused else State.DISCONNECTED

    def fenced(self, e: wire.Fenced) -> None:
        """The destination was promoted: this source is never applied again, and says so. Its
        writes stay (journal, then dirty bits): a failback sends back what differs."""
        aim = self.aim
        aim.record.fenced = json.dumps({**e.info, "message": str(e)})
        aim.record.save(aim.meta)
        aim.state = State.FENCED
        log.error("aim %s: %s; this source is not applied any more (writes here are kept for a failback)",
                  aim.name, e)

    def begin(self, conn: Connection, dest_applied: int, dest_resyncing: bool) -> None:
        aim, rec, obs = self.aim, self.aim.record, self.obs
        epoch = obs.epoch
        lost = dest_applied < rec.acked_seq  # the destination lost acknowledged data: start over
        if lost:
            log.warning("aim %s: destination is at %d, behind the acknowledged %d: full resync",
                        aim.name, dest_applied, rec.acked_seq)
        if rec.overflowed or rec.resync_from is not None or dest_resyncing or lost:
            # a destination resyncing on its own (restored, or re-created) gets every block
            full = lost or (dest_resyncing and not rec.overflowed and rec.resync_from is None)
            start = self.resync(conn, full=full, epoch=epoch)
        else:
            start = dest_applied + 1
            with obs.volume.lock:
                rec.acked_seq = dest_applied
                obs.backlog.reset(dest_applied)
                obs.journal.reclaim(dest_applied)
            rec.save(aim.meta)
        aim.state = State.REPLICATING
        self._progress_from = rec.acked_seq
        now = self.monotonic()
        conn.settimeout(0)  # from here on, no send or receive waits: a turn never blocks a worker
        self.session = Session(conn, Cursor(obs.journal, start), epoch, now + STEADY_SECONDS, now, now)
        self.task.wake()

    # -- streaming, in turns on the reactor ---------------------------------------------------------------
    def _turn(self) -> None:
        s = self.session
        if s is None:
            return
        try:
            self._pump(s)
        except BaseException as e:  # noqa: BLE001 - every end of a session goes to the supervisor
            self._end(s, e)

    def _pump(self, s: Session) -> None:
        """Read the acknowledgements that came, then ship up to one chunk of the journal; park
        the connection when everything is shipped (a write, an acknowledgement or the heartbeat's
        time wakes it), or when the socket takes no more (a destination that stopped reading: it
        is suspended at a group marker, or slow), until it does."""
        obs, rec = self.obs, self.aim.record
        now = self.monotonic()
        if self._read_acks(s.conn):
            s.heard_at = now
        if not self.active or s.epoch != obs.epoch:
            raise _Over()  # paused, closing, or overflowed (the next session resynchronises)
        silent = now - s.heard_at
        if silent >= self.timeout:
            raise TimeoutError(f"the destination answered nothing in {self.timeout:g}s")
        if s.steady_at is not None and now >= s.steady_at:
            s.steady_at = None  # up this long without a fault (an idle set acknowledges nothing)
            self.aim.supervisor.healthy()
        shipped, sent = 0, s.conn.send_pending(s.pending)
        landed, tail_first, tail_size = obs.landed
        if sent:
            # a piece is sent in full before the cursor goes on (it closes a segment's file
            # when it moves to the next): hence a flush after each, and a stop when it is not
            for first, last, time_ns, f, pos, count in s.cursor.ranges(landed, tail_first, tail_size):
                s.pending.append((f, pos, count))
                rec.bytes_sent += count
                s.range_bytes += count
                shipped += count
                if last:
                    obs.backlog.sent(last, last - first + 1, s.range_bytes, time_ns)
                    s.range_bytes = 0
                sent = s.conn.send_pending(s.pending)
                if not sent or shipped >= TURN_BYTES or s.epoch != obs.epoch:
                    break  # the socket is full, or the other sets' turns first
        if shipped or not sent:
            s.sent_at = self.monotonic()
        if not sent:
            self.reactor.park(s.conn.sock, self.task.wake, self.timeout - silent, writable=True)
        elif shipped >= SMALL_BATCH:
            self.task.wake()
        elif shipped:
            # a trickle (small random writes, however many are in flight): let it gather into
            # one send; a sender looping on a few entries at a time takes the interpreter from
            # the write path (measured: a third of a core, and 4x fewer IOPS)
            self.reactor.call_later(BATCH_DELAY, self.task.wake)
        else:
            self._idle(s, now, silent)

    def _idle(self, s: Session, now: float, silent: float) -> None:
        """Everything is shipped: wait for a write, an acknowledgement, or the heartbeat's time."""
        obs = self.obs
        obs.waiter = self.task.wake  # then look again: publish() sees one or the other
        if s.cursor.seq <= obs.landed[0]:
            obs.waiter = None
            self.task.wake()
            return
        quiet = now - s.sent_at
        if quiet >= self.heartbeat:
            frame = frames.Frame(frames.HEARTBEAT, time_ns=time.time_ns()).encode()
            s.pending.append(memoryview(frame))
            self.aim.record.bytes_sent += len(frame)
            s.sent_at, quiet = now, 0.0
            if not s.conn.send_pending(s.pending):
                self.reactor.park(s.conn.sock, self.task.wake, self.timeout - silent, writable=True)
                return
        s.conn.release()
        self.reactor.park(s.conn.sock, self.task.wake, min(self.heartbeat - quiet, self.timeout - silent))

    def _end(self, s: Session, e: BaseException) -> None:
        self.session = None
        self.obs.waiter = None
        s.cursor.close()
        failure: BaseException | None = e
        if isinstance(e, _Over) or not self.active or s.epoch != self.obs.epoch:
            failure = None  # an overflow cut the connection too: the next session resynchronises
        elif isinstance(e, OSError):
            try:
                _raise_reason(s.conn)  # a destination that stopped applying said why before it closed
            except DestinationError as reason:
                failure = reason
        s.conn.shutdown()
        self._closed(s.conn, failure)
        self.aim.supervisor.ended(failure)

    # -- acknowledgements ------------------------------------------------------------------------------
    def _read_acks(self, conn: Connection) -> bool:
        """Every acknowledgement that has arrived (none waited for); True if any had."""
        heard = False
        while batch := conn.batch(wait=0):
            heard = True
            for f in batch:
                f = _ack(f)
                self.acknowledged(f.seq)
                if f.payload:
                    for result in json.loads(f.payload).get("markers", []):
                        self.aim.markers.result(result["id"], result)
        return heard

    def acknowledged(self, seq: int) -> None:
        rec, obs = self.aim.record, self.obs
        if self._progress_from is not None and (seq > self._progress_from or seq >= obs.landed[0]):
            self._progress_from = None  # the destination applies again: the next failure is a new one
            self._refused = False
            self.aim.supervisor.healthy()
        if seq <= rec.acked_seq:
            return
        with obs.volume.lock:  # the counters are also moved by appends, under this lock
            obs.backlog.acknowledged(seq)
            rec.acked_seq = seq
            obs.journal.reclaim(seq)
        # persisted at most once a second: after a crash the destination says where it is anyway
        if self.monotonic() - self._persisted_at >= ACK_PERSIST_SECONDS:
            self._persisted_at = self.monotonic()
            rec.save(self.aim.meta)

    # -- resynchronisation ------------------------------------------------------------------------------
    def resync(self, conn: Connection, *, full: bool, epoch: int) -> int:
        """Copy the dirty blocks' current content, then let the journal take over from where it
        started. Returns the sequence number the stream continues from."""
        aim, rec, obs = self.aim, self.aim.record, self.obs
        vol, dirty = obs.volume, obs.dirty
        bs = vol.block_size
        with vol.lock:
            if full:
                for s, e in data_extents(vol.fd, vol.size):
                    dirty.mark(s // bs, (e - 1) // bs)
            pending = dirty.take()
            if rec.resync_from is None:
                rec.resync_from = obs.journal.next_seq
            # markers journaled before the resync point are never shipped (the copy replaces the
            # stream up to there); the handshake already took the results the destination had
            aim.markers.fail_outstanding(aim.name, "the AIM set resynchronised before the marker reached the "
                                         "destination (the journal limit, or a restart after a power loss)",
                                         before_seq=rec.resync_from)
            rec.overflowed = False
            rec.save(aim.meta)
            obs.backlog.reset(rec.resync_from - 1)
        aim.state = State.RESYNCING
        log.info("aim %s: resynchronising %d blocks", aim.name, int.from_bytes(pending, "little").bit_count())
        try:
            rec.bytes_sent += conn.send(frames.Frame(frames.RESYNC_BEGIN, time_ns=time.time_ns()))
            for first, count in runs(pending, vol.nblocks, RESYNC_RUN_BLOCKS):
                if not self.active or epoch != obs.epoch:
                    raise ConnectionError("resync interrupted")
                offset = first * bs
                with vol.lock:
                    data = pread_all(vol.fd, min(count * bs, vol.size - offset), offset)
                rec.bytes_sent += conn.send(frames.Frame(frames.RESYNC_BLOCK, 0, offset, time.time_ns(), data))
            with vol.lock:
                consistent_from = obs.journal.next_seq
            end = rec.resync_from - 1
            rec.bytes_sent += conn.send(frames.Frame(frames.RESYNC_END, end, 0, time.time_ns(),
                                                     json.dumps({"consistent_from": consistent_from}).encode()))
            if _ack(conn.recv()).seq != end:
                raise WireError("the destination did not acknowledge the resync")
        except BaseException as e:
            with vol.lock:
                dirty.untake(pending)
            if isinstance(e, OSError):
                _raise_reason(conn)  # the destination's ERROR frame, if it sent one before closing
            raise
        with vol.lock:
            dirty.save()
        self._refused = False
        aim.supervisor.healthy()  # the destination applied the whole resync
        rec.resync_from = None
        rec.acked_seq = max(rec.acked_seq, end)
        rec.save(aim.meta)
        log.info("aim %s: resync done; streaming from %d", aim.name, end + 1)
        return end + 1


def _ack(f: frames.Frame) -> frames.Frame:
    """The destination's one kind of answer; an ERROR frame says why it stopped applying."""
    if f.type == frames.ERROR:
        try:
            info = json.loads(f.payload)
            raise DestinationError(str(info.get("reason") or "an unknown error"), info.get("errno"))
        except (ValueError, AttributeError):
            raise DestinationError("an error it could not describe") from None
    if f.type != frames.ACK:
        raise WireError(f"unexpected {frames.NAMES[f.type]} frame from the destination")
    return f


def _raise_reason(conn: Connection) -> None:
    """After a failed send: raise the destination's :class:`DestinationError` if an ERROR frame
    is waiting in the stream; return if there is none."""
    try:
        conn.settimeout(2)
        while batch := conn.batch():
            for f in batch:
                _ack(f)
    except DestinationError:
        raise
    except (OSError, WireError, ValueError):
        return


class _Over(Exception):
    """The session ends, and not by a fault: paused, closing, or the journal overflowed."""
