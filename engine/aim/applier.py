"""The destination side of one AIM stream, over a :class:`~.wire.Connection`, in turns on the node's reactor.

Applies entries to the destination volume in sequence order, acknowledges what is durable, and
turns markers into enabled snapshots (or, for a group, one snapshot set once every member has
arrived at the :class:`~.barriers.GroupBarriers`).
"""

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator

from ..errors import AlreadyExists, EngineError
from ..net.reactor import Reactor, Task
from ..storage.names import iso, utcnow
from ..storage.storage import Storage
from ..storage.volume import Volume
from . import frames
from .barriers import GroupBarriers
from .targets import Target
from .verify import CLAIM_TIMEOUT, view_key
from .wire import Connection, WireError

log = logging.getLogger("aimsnap.aim.receiver")
ACK_EVERY_BYTES = 8 << 20
TURN_SECONDS = 0.05  # a busy stream applies this long, then lets the others' turns run
WAITING: dict = {"state": "waiting"}  # a group marker whose members are not all here yet
ACK_DELAY = 0.01  # seconds of quiet before applied writes are flushed and acknowledged
SOURCE_TIME_PERSIST_NS = 10 * 10**9  # an idle set's source clock is written down this often


class StorageFault(Exception):
    """Applying failed here for a reason of this node's storage (not of the stream or the link)."""

    def __init__(self, reason: str, errno_name: str | None, what: str) -> None:
        super().__init__(f"{reason} ({what})")
        self.reason, self.errno_name, self.what = reason, errno_name, what


@contextlib.contextmanager
def storage_faults(what: str) -> Iterator[None]:
    """Storage errors while applying become a :class:`StorageFault` with one line for the operator."""
    try:
        yield
    except OSError as e:
        if e.errno is None or isinstance(e, (ConnectionError, TimeoutError)):
            raise
        reason = os.strerror(e.errno)
        raise StorageFault(reason[:1].lower() + reason[1:], errno.errorcode.get(e.errno), what) from e
    except sqlite3.Error as e:  # e.g. "database or disk is full", "attempt to write a readonly database"
        raise StorageFault(f"metadata: {e}", None, what) from e
    except EngineError as e:
        raise StorageFault(str(e), None, what) from e


class Applier:
    """One stream's applier, run in turns on the node's :class:`~engine.net.reactor.Reactor`: a
    turn applies what has arrived (for at most ``TURN_SECONDS``: a busy stream does not hold a
    worker from the others), then parks the connection until more comes, or is suspended at a
    group marker until the group completes. ``ended`` is told once, with the exception that
    ended the stream (the source closed, the link failed, a frame broke the protocol, a storage
    fault, or nothing from the source within ``idle`` seconds: it sends a heartbeat every few)."""

    def __init__(self, storage: Storage, groups: GroupBarriers, conn: Connection, target: Target,
                 reactor: Reactor, ended: Callable[[BaseException], None], idle: float) -> None:
        self.storage, self.meta, self.groups, self.conn, self.b = storage, storage.meta, groups, conn, target
        self.reactor, self.ended, self.idle = reactor, ended, idle
        # how far this stream got: every entry up to ``applied`` is in the volume (flushed up to the
        # target's applied_seq), and the source had written nothing unsent at ``source_ns`` (its
        # clock, from the frames and heartbeats): what a failover reports as the recovery point
        self.applied, self.source_ns = target.applied_seq, target.applied_source_ns
        self._source_ns_saved = target.applied_source_ns
        self.acked, self.unacked_bytes = target.applied_seq, 0
        self.vol: Volume | None = None
        self.held: list[frames.Frame] = []  # the rest of a batch, from a group marker still waiting
        self.done = False
        self.task = Task(reactor, self._turn)
        self._heard = reactor.monotonic()  # when the source last sent something

    def start(self) -> None:
        self.task.wake()

    def _turn(self) -> None:
        if self.done:
            return
        try:
            self._apply()
        except BaseException as e:  # noqa: BLE001 - every end of the stream is the receiver's to report
            self.done = True
            if isinstance(e, StorageFault):
                self.refuse(e)
            self.reactor.forget(self.conn.sock)
            self.ended(e)

    def refuse(self, e: StorageFault) -> None:
        """A storage fault is told to the source (an ERROR frame it shows as ``last_error``) and logged here."""
        log.warning("aim %s: cannot apply into %s: %s", self.b.set_name, self.b.volume, e)
        payload = {"reason": e.reason, "errno": e.errno_name, "volume": self.b.volume, "while": e.what}
        with contextlib.suppress(OSError):
            self.conn.send(frames.Frame(frames.ERROR, 0, 0, time.time_ns(), json.dumps(payload).encode()))

    def _apply(self) -> None:
        if self.vol is None:
            with storage_faults("opening the volume"):
                self.vol = self.storage.volume(self.b.volume)
        clock = self.reactor.monotonic
        until = clock() + TURN_SECONDS
        while True:
            batch, self.held = (self.held, []) if self.held else (self.conn.batch(wait=0), [])
            now = clock()
            if not batch and self.applied != self.acked and now - self._heard < ACK_DELAY:
                # a short pause in the stream is not idleness: one fdatasync covers what comes within it
                self.reactor.park(self.conn.sock, self.task.wake, ACK_DELAY - (now - self._heard))
                return
            with storage_faults("applying writes"):
                self._batch(self.vol, batch)
            if batch:
                self._heard = clock()  # the quiet that makes an acknowledgement is counted from here
            if self.held:
                return  # suspended at a group marker: resumed by the barrier
            if not batch:
                if now - self._heard >= self.idle:
                    raise TimeoutError(f"nothing from the source in {self.idle:g}s")
                self.conn.release()  # an idle stream holds no receive buffer
                self.reactor.park(self.conn.sock, self.task.wake, self.idle - (now - self._heard))
                return
            if clock() >= until:
                self.task.wake()  # more may be waiting: after the other streams' turns
                return

    def _batch(self, vol: Volume, batch: list[frames.Frame]) -> None:
        b, meta = self.b, self.meta
        applied, acked, unacked_bytes = self.applied, self.acked, self.unacked_bytes
        if (not batch or unacked_bytes >= ACK_EVERY_BYTES) and applied != acked:
            vol.flush()  # idle, or enough is unacknowledged: make it durable, then say so
            meta.execute("UPDATE aim_targets SET applied_seq=?, applied_source_ns=? WHERE set_id=?", applied,
                         self.source_ns, b.set_id)
            self._source_ns_saved = self.source_ns
            acked, unacked_bytes = applied, 0
            self.ack(applied, [])
        writes: list[tuple[int, memoryview]] = []  # a run of writes lands as one batch
        for i, f in enumerate(batch):
            if f.type in (frames.WRITE, frames.ZERO, frames.RESYNC_BLOCK) and f.offset + f.size > vol.size:
                raise WireError(f"{frames.NAMES[f.type]} frame at {f.offset} beyond the end of {vol.name} "
                                f"({vol.size} bytes)")
            if f.type == frames.WRITE and _in_order(f, applied):
                writes.append((f.offset, f.payload))  # type: ignore[arg-type]
                applied, self.source_ns = f.seq, f.time_ns
                unacked_bytes += len(f.payload)
                continue
            if writes:
                vol.apply_writes(writes)
                writes = []
            if f.type == frames.ZERO and _in_order(f, applied):
                vol.apply_zeroes(f.offset, f.length)
                applied, self.source_ns = f.seq, f.time_ns
            elif f.type == frames.MARKER and _in_order(f, applied):
                self.source_ns = f.time_ns
                result = self.marker(vol, f)
                if result is WAITING:
                    self.held = batch[i:]  # this marker again, once the group is complete
                    break
                applied = acked = f.seq
                unacked_bytes = 0
                self.ack(applied, [result] if result else [])
            elif f.type == frames.RESYNC_BEGIN:
                meta.execute("UPDATE aim_targets SET resyncing=1 WHERE set_id=?", b.set_id)
            elif f.type == frames.RESYNC_BLOCK:
                vol.apply_write(f.offset, f.payload)
            elif f.type == frames.RESYNC_END:
                consistent_from = _control(f, {"consistent_from": int})["consistent_from"]
                vol.flush()
                b.consistent_from, applied = consistent_from, f.seq
                meta.execute("UPDATE aim_targets SET resyncing=0, applied_seq=?, consistent_from=? "
                             "WHERE set_id=?", applied, b.consistent_from, b.set_id)
                acked = applied
                self.ack(applied, [])
            elif f.type == frames.HEARTBEAT:
                # sent when the source had shipped everything: all it wrote before is here
                self.source_ns = max(self.source_ns, f.time_ns)
                if applied == acked:
                    self._save_source_time(applied)
                    self.ack(applied, [])  # tells the source we are alive and where we are
        if writes:
            vol.apply_writes(writes)
        self.applied, self.acked, self.unacked_bytes = applied, acked, unacked_bytes

    def _save_source_time(self, applied: int) -> None:
        """An idle set's recovery point moves on with the heartbeats: written down now and then."""
        if not self._source_ns_saved or self.source_ns - self._source_ns_saved >= SOURCE_TIME_PERSIST_NS:
            self.meta.execute("UPDATE aim_targets SET applied_source_ns=? WHERE set_id=? AND applied_seq=?",
                              self.source_ns, self.b.set_id, applied)
            self._source_ns_saved = self.source_ns

    def ack(self, seq: int, markers: list[dict]) -> None:
        payload = json.dumps({"markers": markers}).encode() if markers else b""
        try:
            self.conn.send(frames.Frame(frames.ACK, seq, 0, time.time_ns(), payload))
        except OSError as e:  # the link's fault, never the storage's
            raise ConnectionError(str(e)) from e

    # -- markers -----------------------------------------------------------------------------------------
    def verify_point(self, vol: Volume, f: frames.Frame, verify_id: object) -> None:
        """A verify marker: everything before it is applied; freeze the volume here (the source froze
        its own at the same point) for the verify connection that follows."""
        if not isinstance(verify_id, str) or not verify_id.isalnum() or len(verify_id) > 32:
            raise WireError("verify marker without a usable id")
        vol.flush()
        stale = [k for k in self.storage.frozen if k.startswith(view_key(self.b.set_id, ""))]
        for key in stale:  # a verify whose source gave up before asking for digests: one per set at a time
            self.storage.thaw(key)
        key = view_key(self.b.set_id, verify_id)
        with vol.lock:
            view = self.storage.freeze(vol, key)

        def unclaimed() -> None:  # the source gave up (or died) before asking for the digests
            if not view.claimed and self.storage.frozen.get(key) is view:
                log.warning("aim %s: verify %s: no verify connection within %.0fs: its point is dropped",
                            self.b.set_name, verify_id, CLAIM_TIMEOUT)
                self.storage.thaw(key)
        self.reactor.call_later(CLAIM_TIMEOUT, unclaimed)
        self.meta.execute("UPDATE aim_targets SET applied_seq=? WHERE set_id=?", f.seq, self.b.set_id)
        log.info("aim %s: verify %s: frozen at %d", self.b.set_name, verify_id, f.seq)

    def marker(self, vol: Volume, f: frames.Frame) -> dict | None:  # or WAITING
        """Everything before the marker is applied: flush, enable the pre-configured snapshot (or
        the group's snapshot set), and record the result with the new applied position atomically."""
        b = self.b
        verify = _control(f, {}).get("verify")
        if verify is not None:
            return self.verify_point(vol, f, verify)
        m = _control(f, {"id": int, "point": str})
        if m.get("group") is not None:
            _fields(f, m["group"], {"id": str, "members": list, "snapshot_set": str})
            if not all(isinstance(x, str) for x in m["group"]["members"]):
                raise WireError("marker frame whose group members are not AIM set ids")
        if not isinstance(m.get("snapshot"), (str, type(None))) or not isinstance(m.get("label"), (str, type(None))):
            raise WireError("marker frame whose snapshot or label is not a name")
        key = str(m["id"])
        row = self.meta.one("SELECT result FROM applied_markers WHERE set_id=? AND marker_id=?", b.set_id, key)
        if row:
            return json.loads(row["result"])
        vol.flush()
        if f.seq < b.consistent_from:
            result = {"state": "failed", "error": "the marker was issued during a resynchronisation: the destination "
                                                  "image was not consistent at that point"}
        elif m.get("group"):
            g = m["group"]
            result = self.groups.arrive(g["id"], b.set_id, g["members"],
                                        lambda: self.enable_set(g["snapshot_set"], m), self.task.wake)
            if result is None:
                return WAITING
        else:
            result = self.enable(vol, m)
        group = m.get("group") or {}
        # what a failover to this marker's point needs: which snapshot (or set) holds it, and the
        # source's clock at the marker (the recovery point's age)
        result = {"id": m["id"], "group_marker": group.get("id"), **result, "snapshot": m.get("snapshot"),
                  "snapshot_set": group.get("snapshot_set"), "source_ns": f.time_ns}
        with self.meta.transaction() as db:
            db.execute("INSERT OR REPLACE INTO applied_markers VALUES (?,?,?)", (b.set_id, key, json.dumps(result)))
            db.execute("UPDATE aim_targets SET applied_seq=?, applied_source_ns=? WHERE set_id=?",
                       (f.seq, f.time_ns, b.set_id))
        self._source_ns_saved = f.time_ns
        log.info("aim %s: marker %s %s%s", b.set_name, m["id"], result["state"],
                 f" ({result.get('error')})" if result.get("error") else "")
        return result

    def enable(self, vol: Volume, m: dict) -> dict:
        name = m.get("snapshot")
        rel = self.storage.snapshots.get(name) if name else None
        if rel is None:
            return {"state": "failed", "error": f"snapshot {name!r} is not pre-configured on the destination node"}
        if rel.source is not vol:
            return {"state": "failed", "error": f"snapshot {name!r} is a snapshot of {rel.source.name!r}, "
                                               f"not of the destination volume {vol.name!r}"}
        point = point_name(m) if rel.type == "differential" else None
        try:
            r = self.storage.enable_snapshot(name, point)
        except AlreadyExists:  # enabled before a crash that came before recording it
            r = {"point": point, "enabled_at": None}
        except EngineError as e:
            return {"state": "failed", "error": str(e)}
        return {"state": "applied", "point": r["point"], "applied_at": r["enabled_at"] or iso(utcnow())}

    def enable_set(self, set_name: str, m: dict) -> dict:
        try:
            r = self.storage.enable_snapshot_set(set_name, point_name(m))
        except AlreadyExists:
            return {"state": "applied", "point": point_name(m), "applied_at": iso(utcnow())}
        except EngineError as e:
            return {"state": "failed", "error": str(e)}
        return {"state": "applied", "point": r["point"], "applied_at": r["enabled_at"]}


def point_name(m: dict) -> str:
    """LABEL.TIMESTAMP, or the timestamp: unique per marker (the source never stamps two markers
    in the same millisecond), so a point that already exists was made by this very marker."""
    return f"{m['label']}.{m['point']}" if m.get("label") else m["point"]


def _in_order(f: frames.Frame, applied: int) -> bool:
    """Whether a journal entry is the next to apply; False for one applied before a reconnect."""
    if f.seq <= applied:
        return False
    if f.seq != applied + 1:
        raise WireError(f"sequence gap: expected {applied + 1}, got {f.seq}")
    return True


def _control(f: frames.Frame, required: dict[str, type]) -> dict:
    """A control frame's JSON payload, with the fields the applier relies on; else a WireError
    (the checksum held, so it is the sender's bug or a forgery, never applied)."""
    try:
        obj = json.loads(f.payload)
    except (ValueError, UnicodeDecodeError):
        raise WireError(f"{frames.NAMES[f.type]} frame whose payload is not JSON") from None
    return _fields(f, obj, required)


def _fields(f: frames.Frame, obj: object, required: dict[str, type]) -> dict:
    if not isinstance(obj, dict) or any(not isinstance(obj.get(k), t) or isinstance(obj.get(k), bool)
                                        for k, t in required.items()):
        raise WireError(f"{frames.NAMES[f.type]} frame without {', '.join(required)} of the right types")
    return obj
