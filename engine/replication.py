"""The source side of AIM: AIM sets, their journal and sender, markers and groups.

An :class:`AimSet` is a write observer of its source volume: every write is appended to the
journal before it lands (or, past the journal limit, marked in a dirty bitmap). A sender thread
per set connects to the destination's AIM port, resynchronises when needed (copying only dirty
blocks), and streams the journal from the last acknowledged entry. Markers are journal entries;
a group marker is one entry in each member's journal, all appended under a barrier.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta


from . import aimwire, frames
from .aimwire import WireError
from .bitmap import BlockBitmap, runs
from .errors import AlreadyExists, Conflict, EngineError, InvalidInput, NotFound
from .fsutil import data_extents
from .journal import Cursor, Entry, Journal
from .units import format_size, parse_size
from .volume import Volume, WriteIntent, barrier, pread_all

log = logging.getLogger("aimsnap.aim")
STATES = ("replicating", "disconnected", "resyncing", "paused")
TO_RE = re.compile(r"^(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})/(?P<volume>[^/\s]+)$")
DEFAULT_JOURNAL_LIMIT = 1 << 30
MAX_LABEL = 100  # a point is named LABEL.TIMESTAMP, at most 128 characters
HEARTBEAT_SECONDS = 2.0
RESYNC_RUN_BLOCKS = 64
SMALL_BATCH = 1 << 20
BATCH_DELAY = 0.002


def parse_to(text: str) -> tuple[str, int, str]:
    m = TO_RE.match(text or "")
    if not m or int(m["port"]) > 65535:
        raise InvalidInput(f"invalid --to {text!r}: write HOST:AIMPORT/DESTVOLUME, e.g. 10.0.0.2:7411/db01-dr")
    return m["host"].strip("[]"), int(m["port"]), m["volume"]



def _ship(sock, f, pos: int, count: int) -> None:
    """``count`` journal bytes from ``pos``: straight from the page cache to the socket
    (``sendfile``), or through a buffer when TLS must encrypt them."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(os.pread(f.fileno(), count, pos))
    elif sock.sendfile(f, pos, count) != count:
        raise ConnectionError("the destination closed the stream")

class AimSet:
    def __init__(self, repl: "Replication", row: dict, volume: Volume) -> None:
        self.repl, self.meta, self.volume = repl, repl.node.meta, volume
        self.name, self.id = row["name"], row["id"]
        self.host, self.port, self.dest_volume = row["dest_host"], row["dest_port"], row["dest_volume"]
        self.journal_limit = row["journal_limit"]
        self.dir = repl.set_dir(self.name)
        with open(os.path.join(self.dir, "dest.token")) as f:
            self.token = f.read().strip()
        self.tls = aimwire.client_tls(os.path.join(self.dir, "dest-ca.pem")) if row["tls"] else None
        self.journal = Journal(os.path.join(self.dir, "journal"))
        self.dirty = BlockBitmap(os.path.join(self.dir, "dirty.bm"), volume.nblocks)
        self.acked_seq, self.checkpoint_seq = row["acked_seq"], row["checkpoint_seq"]
        self.overflowed, self.paused = bool(row["overflowed"]), bool(row["paused"])
        self.resync_from: int | None = row["resync_from"]
        self.bytes_written, self.bytes_sent = row["bytes_written"], row["bytes_sent"]
        self.state = "paused" if self.paused else "disconnected"
        self.last_error: str | None = None
        self.cond = threading.Condition()
        self.closing = False
        self.generation = 0  # bumped by an overflow: the sender drops what it is doing
        self.sender_idle = False
        self._persisted_at = 0.0
        self.replaying = False
        # ranges sent, not yet acknowledged: (last seq, entries, bytes, time_ns of the first)
        self.inflight: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self.unacked_entries, self.unacked_bytes, self.oldest_ns = self.journal.backlog(self.acked_seq)
        self.publish()
        self._sock = None
        self._thread: threading.Thread | None = None

    # -- the write path ------------------------------------------------------------------------------
    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        if self.replaying:
            return
        if self.overflowed:
            for intent in batch:
                self.bytes_written += intent.length
                self.dirty.mark(intent.first, intent.last)
            return
        entries: list[Entry] = []
        for intent in batch:
            self.bytes_written += intent.length
            if intent.data is not None:
                entries.append((frames.WRITE, intent.offset, intent.data, -1))
            elif intent.source is not None:  # an increment copying into this (snapshot) volume
                data = pread_all(intent.source.fd, intent.length, intent.offset)
                entries.append((frames.WRITE, intent.offset, data, -1))
            else:
                entries.append((frames.ZERO, intent.offset, b"", intent.length))
        now = time.time_ns()
        _seq, size = self.journal.append_many(entries, now)
        self._appended(len(entries), size, now)
        if self.unacked_bytes > self.journal_limit:
            self._overflow()

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        if not self.replaying:
            self.publish()

    def publish(self) -> None:
        """What the sender may ship: every entry up to here has its data in the volume too (an
        entry whose volume write failed is never sent). One attribute, so the sender reads it
        without the volume lock, which the write path holds."""
        tail = self.journal.segments[-1] if self.journal.segments else None
        self.landed = (self.journal.next_seq - 1, tail.first if tail else 0, tail.size if tail else 0)
        if self.sender_idle:  # wake the sender only when it sleeps: a condition per write costs IOPS
            with self.cond:
                self.cond.notify_all()

    def _appended(self, entries: int, size: int, now: int) -> None:
        self.unacked_entries += entries
        self.unacked_bytes += size
        self.oldest_ns = self.oldest_ns or now

    def flush(self) -> None:
        self.journal.sync()
        self.dirty.sync()

    def _overflow(self) -> None:
        """Past the journal limit (caller holds the volume lock): turn every unacknowledged entry
        into dirty bits, drop the journal, and track further writes in the bitmap until a resync."""
        failed = []
        for frame, _raw in self.journal.read_from(self.acked_seq + 1):
            if frame.type in (frames.WRITE, frames.ZERO):
                bs = self.volume.block_size
                self.dirty.mark(frame.offset // bs, (frame.offset + max(frame.size, 1) - 1) // bs)
            elif frame.type == frames.MARKER:
                failed.append(json.loads(frame.payload)["id"])
        self.dirty.sync()
        self.journal.reset(self.journal.next_seq)
        self.publish()
        self.overflowed, self.resync_from = True, None
        self.checkpoint_seq = self.journal.next_seq - 1
        self.unacked_entries = self.unacked_bytes = self.oldest_ns = 0
        self.inflight.clear()
        self.meta.execute("UPDATE aim_sets SET overflowed=1, resync_from=NULL, checkpoint_seq=? WHERE name=?",
                          self.checkpoint_seq, self.name)
        for marker_id in failed:
            self.repl.marker_result(marker_id, {"state": "failed", "error": "the journal limit was reached before "
                                                "the marker reached the destination (the set resynchronises)"})
        self.generation += 1
        log.warning("aim %s: journal over its limit of %s: tracking dirty blocks until a resync",
                    self.name, format_size(self.journal_limit))
        self._drop_connection()

    # -- replay after a crash -------------------------------------------------------------------------
    def replay(self) -> int:
        """Re-apply journal entries after the last checkpoint: a kill may have come between an
        entry reaching the journal and its data reaching the volume. Idempotent, in order."""
        count = 0
        self.replaying = True
        try:
            for frame, _raw in self.journal.read_from(self.checkpoint_seq + 1):
                if frame.type == frames.WRITE:
                    self.volume.apply_write(frame.offset, frame.payload)
                elif frame.type == frames.ZERO:
                    self.volume.apply_zeroes(frame.offset, frame.length)
                count += 1
        finally:
            self.replaying = False
        if count:
            self.volume.flush()
        self.checkpoint()
        return count

    def checkpoint(self) -> None:
        """Everything journaled so far is in the volume and durable (caller flushed it)."""
        self.checkpoint_seq = self.journal.next_seq - 1
        self.meta.execute("UPDATE aim_sets SET checkpoint_seq=?, acked_seq=?, bytes_written=?, bytes_sent=? "
                          "WHERE name=?", self.checkpoint_seq, self.acked_seq, self.bytes_written, self.bytes_sent,
                          self.name)

    # -- the sender ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"aim-send-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.closing = True
        self._drop_connection()
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.meta.execute("UPDATE aim_sets SET paused=? WHERE name=?", int(paused), self.name)
        if paused:
            self._drop_connection()
        with self.cond:
            self.cond.notify_all()

    def _drop_connection(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(2)
            except OSError:
                pass

    def _run(self) -> None:
        backoff = 0.1
        while not self.closing:
            if self.paused:
                self.state = "paused"
                with self.cond:
                    self.cond.wait(1.0)
                continue
            sock = None
            try:
                sock = aimwire.connect(self.host, self.port, tls=self.tls)
                self._sock = sock
                # markers the destination may have applied while their acknowledgement was lost
                outstanding = [r["id"] for r in self.meta.query(
                    "SELECT id FROM markers WHERE aim_set=? AND state='issued' AND seq IS NOT NULL "
                    "ORDER BY id LIMIT 1000", self.name)]
                answer = aimwire.client_handshake(sock, self.token, {"op": "stream", "set_id": self.id,
                                                                       "set_name": self.name,
                                                                       "outstanding_markers": outstanding})
                for result in answer.get("marker_results", []):
                    self.repl.marker_result(result["id"], result)
                sock.settimeout(120)
                backoff = 0.1
                self.last_error = None
                self._session(sock, int(answer.get("applied_seq", 0)), bool(answer.get("resyncing")))
            except (OSError, WireError, frames.FrameError, ValueError) as e:
                if not self.closing and not self.paused:
                    self.last_error = str(e) or type(e).__name__
                    log.info("aim %s: disconnected: %s", self.name, self.last_error)
            finally:
                self._sock = None
                if sock is not None:
                    sock.close()
                if not self.paused:
                    self.state = "disconnected"
            with self.cond:
                if not self.closing:
                    self.cond.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _session(self, sock, dest_applied: int, dest_resyncing: bool) -> None:
        generation = self.generation
        lost = dest_applied < self.acked_seq  # the destination lost acknowledged data: start over
        if lost:
            log.warning("aim %s: destination is at %d, behind the acknowledged %d: full resync",
                        self.name, dest_applied, self.acked_seq)
        if self.overflowed or self.resync_from is not None or dest_resyncing or lost:
            # a destination resyncing on its own (restored, or re-created) gets every block
            full = lost or (dest_resyncing and not self.overflowed and self.resync_from is None)
            start = self._resync(sock, full=full, generation=generation)
        else:
            start = dest_applied + 1
            with self.volume.lock:
                self.acked_seq = dest_applied
                self.inflight.clear()
                self.unacked_entries, self.unacked_bytes, self.oldest_ns = self.journal.backlog(dest_applied)
                self.journal.reclaim(dest_applied)
            self.meta.execute("UPDATE aim_sets SET acked_seq=? WHERE name=?", dest_applied, self.name)
        self.state = "replicating"
        reader = threading.Thread(target=self._read_acks, args=(sock,), daemon=True)
        reader.start()
        cursor = Cursor(self.journal, start)
        try:
            self._stream(sock, cursor, reader, generation)
        finally:
            cursor.close()

    def _stream(self, sock, cursor: Cursor, reader: threading.Thread, generation: int) -> None:
        while not self.closing and not self.paused and generation == self.generation and reader.is_alive():
            sent, range_bytes, iteration_bytes = False, 0, 0
            landed, tail_first, tail_size = self.landed
            for first, last, time_ns, f, pos, count in cursor.ranges(landed, tail_first, tail_size):
                _ship(sock, f, pos, count)
                self.bytes_sent += count
                range_bytes += count
                iteration_bytes += count
                sent = True
                if last:
                    self.inflight.append((last, last - first + 1, range_bytes, time_ns))
                    range_bytes = 0
                if generation != self.generation:
                    break
            if sent and iteration_bytes < SMALL_BATCH:
                # a trickle (small random writes, however many are in flight): let it gather into
                # one send; a sender looping on a few entries at a time takes the interpreter from
                # the write path (measured: a third of a core, and 4x fewer IOPS)
                time.sleep(BATCH_DELAY)
            if not sent:
                with self.cond:
                    self.sender_idle = True
                    if cursor.seq > self.landed[0]:  # re-read after saying so: publish() sees one or the other
                        self.cond.wait(HEARTBEAT_SECONDS)
                    self.sender_idle = False
                if cursor.seq > self.landed[0]:
                    self.bytes_sent += aimwire.send_frame(sock, frames.Frame(frames.HEARTBEAT, time_ns=time.time_ns()))
        raise ConnectionError("stream ended")

    def _read_acks(self, sock) -> None:
        try:
            while True:
                f = aimwire.recv_frame(sock)
                if f.type != frames.ACK:
                    raise WireError(f"unexpected {frames.NAMES[f.type]} frame from the destination")
                self._acknowledged(f.seq)
                if f.payload:
                    for result in json.loads(f.payload).get("markers", []):
                        self.repl.marker_result(result["id"], result)
        except (OSError, WireError, ValueError):
            self._drop_connection()

    def _acknowledged(self, seq: int) -> None:
        if seq <= self.acked_seq:
            return
        with self.volume.lock:  # the counters are also moved by appends, under this lock
            while self.inflight and self.inflight[0][0] <= seq:  # whole ranges the destination has
                _, count, size, _ = self.inflight.popleft()
                self.unacked_entries -= count
                self.unacked_bytes -= size
            self.acked_seq = seq
            if self.inflight:
                self.oldest_ns = self.inflight[0][3]
            elif self.unacked_entries <= 0:
                self.unacked_entries = self.unacked_bytes = self.oldest_ns = 0
            self.journal.reclaim(seq)
        # persisted at most once a second: after a crash the destination says where it is anyway
        if time.monotonic() - self._persisted_at >= 1.0:
            self._persisted_at = time.monotonic()
            self.meta.execute("UPDATE aim_sets SET acked_seq=?, bytes_written=?, bytes_sent=? WHERE name=?",
                              seq, self.bytes_written, self.bytes_sent, self.name)

    def _resync(self, sock, *, full: bool, generation: int) -> int:
        """Copy the dirty blocks' current content, then let the journal take over from where it
        started. Returns the sequence number the stream continues from."""
        bs, vol = self.volume.block_size, self.volume
        with vol.lock:
            if full:
                for s, e in data_extents(vol.fd, vol.size):
                    self.dirty.mark(s // bs, (e - 1) // bs)
            pending = self.dirty.take()
            if self.resync_from is None:
                self.resync_from = self.journal.next_seq
            self.overflowed = False
            self.meta.execute("UPDATE aim_sets SET overflowed=0, resync_from=? WHERE name=?",
                              self.resync_from, self.name)
            self.unacked_entries, self.unacked_bytes, self.oldest_ns = self.journal.backlog(self.resync_from - 1)
            self.inflight.clear()
        self.state = "resyncing"
        log.info("aim %s: resynchronising %d blocks", self.name, int.from_bytes(pending, "little").bit_count())
        try:
            self.bytes_sent += aimwire.send_frame(sock, frames.Frame(frames.RESYNC_BEGIN, time_ns=time.time_ns()))
            for first, count in runs(pending, vol.nblocks, RESYNC_RUN_BLOCKS):
                if self.closing or self.paused or generation != self.generation:
                    raise ConnectionError("resync interrupted")
                offset = first * bs
                with vol.lock:
                    data = pread_all(vol.fd, min(count * bs, vol.size - offset), offset)
                self.bytes_sent += aimwire.send_frame(sock, frames.Frame(frames.RESYNC_BLOCK, 0, offset,
                                                                          time.time_ns(), data))
            with vol.lock:
                consistent_from = self.journal.next_seq
            end = self.resync_from - 1
            self.bytes_sent += aimwire.send_frame(sock, frames.Frame(
                frames.RESYNC_END, end, 0, time.time_ns(), json.dumps({"consistent_from": consistent_from}).encode()))
            ack = aimwire.recv_frame(sock)
            if ack.type != frames.ACK or ack.seq != end:
                raise WireError("the destination did not acknowledge the resync")
        except BaseException:
            with vol.lock:
                self.dirty.untake(pending)
            raise
        with vol.lock:
            self.dirty.save()
        self.resync_from = None
        self.meta.execute("UPDATE aim_sets SET resync_from=NULL WHERE name=?", self.name)
        self.acked_seq = max(self.acked_seq, end)
        self.meta.execute("UPDATE aim_sets SET acked_seq=? WHERE name=?", self.acked_seq, self.name)
        log.info("aim %s: resync done; streaming from %d", self.name, end + 1)
        return end + 1

    # -- reporting --------------------------------------------------------------------------------------
    def status(self) -> dict:
        lag = max(0.0, time.time() - self.oldest_ns / 1e9) if self.oldest_ns and self.unacked_entries > 0 else 0.0
        last = self.meta.one("SELECT id, applied_at, point, snapshot, snapshot_set FROM markers WHERE aim_set=? "
                             "AND state='applied' ORDER BY id DESC LIMIT 1", self.name)
        return {"name": self.name, "state": self.state, "source": self.volume.name, "tls": self.tls is not None,
                "destination": f"{self.host}:{self.port}/{self.dest_volume}",
                "overflowed": self.overflowed, "dirty_blocks": self.dirty.count(),
                "queued_entries": max(self.unacked_entries, 0), "queued_bytes": max(self.unacked_bytes, 0),
                "lag_seconds": round(lag, 3), "bytes_written": self.bytes_written, "bytes_sent": self.bytes_sent,
                "acked_seq": self.acked_seq, "last_seq": self.journal.next_seq - 1,
                "journal_limit": self.journal_limit, "last_applied_marker": last, "last_error": self.last_error}

    def close(self) -> None:
        self.stop()
        self.journal.close()
        self.dirty.close()


class Replication:
    """Every AIM set, group and marker of a node (source side), and its AIM port (destination side)."""

    def __init__(self, node) -> None:
        self.node, self.meta = node, node.meta
        self.sets: dict[str, AimSet] = {}
        self.serving = False
        self.waiters = threading.Condition()
        self._stamp_lock = threading.Lock()
        self._last_stamp: datetime | None = None
        os.makedirs(os.path.join(node.root, "aim"), exist_ok=True)

    def set_dir(self, name: str) -> str:
        return os.path.join(self.node.root, "aim", name)

    def load(self) -> None:
        """Attach every AIM set to its volume and replay what a crash may have cut short. Senders
        start only in a serving node (:meth:`start`): a CLI process on the root just journals."""
        for row in self.meta.query("SELECT * FROM aim_sets ORDER BY created_at"):
            vol = self.node.volumes[row["source"]]
            aim = AimSet(self, row, vol)
            if self.node.unclean_machine_restart:  # the page cache was lost: trust nothing, resync
                with vol.lock:
                    for s, e in data_extents(vol.fd, vol.size):
                        aim.dirty.mark(s // vol.block_size, (e - 1) // vol.block_size)
                aim.overflowed = True
                self.meta.execute("UPDATE aim_sets SET overflowed=1 WHERE name=?", aim.name)
            vol.observers.append(aim)
            replayed = aim.replay()
            if replayed:
                log.info("aim %s: replayed %d journal entries into %s after an unclean stop",
                         aim.name, replayed, vol.name)
            self.sets[aim.name] = aim
        self.meta.execute("UPDATE markers SET state='failed', error='lost in a crash before it was journaled' "
                          "WHERE state='issued' AND seq IS NULL")
        for row in self.meta.query("SELECT set_name, volume FROM aim_targets"):  # destination side
            if row["volume"] in self.node.volumes:
                self.node.volumes[row["volume"]].replica_of = row["set_name"]
        for name in os.listdir(os.path.join(self.node.root, "aim")):
            if name not in self.sets:
                shutil.rmtree(self.set_dir(name), ignore_errors=True)

    def start(self) -> None:
        self.serving = True
        for aim in self.sets.values():
            aim.start()

    def close(self) -> None:
        for aim in self.sets.values():
            aim.stop()
        for aim in self.sets.values():
            aim.volume.flush()
            aim.checkpoint()
            with aim.volume.lock:
                aim.volume.observers.remove(aim)
            aim.close()

    def aim_set(self, name: str) -> AimSet:
        try:
            return self.sets[name]
        except KeyError:
            raise NotFound(f"AIM set {name!r} does not exist") from None

    # -- AIM sets ----------------------------------------------------------------------------------------
    def create(self, name: str, source: str, to: str, token: str, journal_limit: str | int | None = None,
               tls_ca: str | None = None) -> dict:
        """``tls_ca``: the PEM text of the certificate (or CA) the destination's AIM port must present."""
        from .node import check_name, iso
        check_name("AIM set", name)
        host, port, dest_volume = parse_to(to)
        limit = parse_size(journal_limit if journal_limit is not None else DEFAULT_JOURNAL_LIMIT)
        if limit < 1 << 20:
            raise InvalidInput(f"invalid journal limit {journal_limit!r}: at least 1MiB")
        if not token or len(token) < 16:
            raise InvalidInput("the destination token is missing or too short (give --to-token-file)")
        with self.node.lock:
            vol = self.node.volume(source)
            if name in self.sets:
                raise AlreadyExists(f"AIM set {name!r} already exists")
            if any(a.volume is vol for a in self.sets.values()):
                raise Conflict(f"volume {source!r} is already the source of an AIM set")
            if vol.replica_of:
                raise Conflict(f"volume {source!r} is itself an AIM destination")
            set_id = uuid.uuid4().hex
            d = self.set_dir(name)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            tls = None
            if tls_ca:
                with open(os.path.join(d, "dest-ca.pem"), "w") as f:
                    f.write(tls_ca)
                try:
                    tls = aimwire.client_tls(os.path.join(d, "dest-ca.pem"))
                except (OSError, ValueError) as e:
                    shutil.rmtree(d, ignore_errors=True)
                    raise InvalidInput(f"the destination TLS certificate is not usable: {e}") from None
            try:
                self._call_destination(host, port, token, {"op": "claim", "set_id": set_id, "set_name": name,
                                                           "volume": dest_volume, "size": vol.size,
                                                           "source": f"{source}"}, tls)
            except EngineError:
                shutil.rmtree(d, ignore_errors=True)
                raise
            fd = os.open(os.path.join(d, "dest.token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)
            with vol.lock:  # the initial sync copies every block written so far
                bs = vol.block_size
                BlockBitmap.create(os.path.join(d, "dirty.bm"), vol.nblocks,
                                   ((s // bs, (e - 1) // bs) for s, e in data_extents(vol.fd, vol.size))).close()
                self.meta.execute("INSERT INTO aim_sets (name, id, source, dest_host, dest_port, dest_volume, "
                                  "journal_limit, overflowed, created_at, tls) VALUES (?,?,?,?,?,?,?,1,?,?)",
                                  name, set_id, source, host, port, dest_volume, limit, iso(self.node.clock()),
                                  int(tls is not None))
                aim = AimSet(self, self.meta.one("SELECT * FROM aim_sets WHERE name=?", name), vol)
                vol.observers.append(aim)
            self.sets[name] = aim
            if self.serving:
                aim.start()
            return self.info(name)

    def _call_destination(self, host: str, port: int, token: str, hello: dict, tls=None) -> dict:
        try:
            with aimwire.connect(host, port, tls=tls) as sock:
                return aimwire.client_handshake(sock, token, hello)
        except WireError as e:
            raise Conflict(f"destination {host}:{port} refused: {e}") from None
        except OSError as e:
            raise EngineError(f"destination AIM port {host}:{port} is unreachable: {e.strerror or e}") from None

    def info(self, name: str) -> dict:
        aim = self.aim_set(name)
        groups = [r["group_name"] for r in self.meta.query(
            "SELECT group_name FROM group_members WHERE aim_set=? ORDER BY group_name", name)]
        return {**aim.status(), "id": aim.id, "paused": aim.paused, "groups": groups}

    def list(self) -> list[dict]:
        return [self.info(n) for n in sorted(self.sets)]

    def delete(self, name: str) -> None:
        with self.node.lock:
            aim = self.aim_set(name)
            groups = self.info(name)["groups"]
            if groups:
                raise Conflict(f"AIM set {name!r} is a member of group(s) {', '.join(groups)}: delete those first")
            aim.stop()
            with aim.volume.lock:
                aim.volume.observers.remove(aim)
            aim.close()
            try:
                self._call_destination(aim.host, aim.port, aim.token, {"op": "release", "set_id": aim.id}, aim.tls)
            except EngineError as e:
                log.warning("aim %s: could not release the destination volume: %s", name, e)
            self.meta.execute("DELETE FROM aim_sets WHERE name=?", name)
            del self.sets[name]
            shutil.rmtree(self.set_dir(name), ignore_errors=True)

    def pause(self, name: str, paused: bool = True) -> dict:
        self.aim_set(name).set_paused(paused)
        return self.info(name)

    # -- groups --------------------------------------------------------------------------------------------
    def create_group(self, name: str, members: list[str]) -> dict:
        from .node import check_name, iso
        check_name("group", name)
        if len(members) < 1 or len(set(members)) != len(members):
            raise InvalidInput(f"group {name!r} needs distinct members")
        with self.node.lock:
            for m in members:
                self.aim_set(m)
            if self.meta.one("SELECT name FROM groups WHERE name=?", name):
                raise AlreadyExists(f"group {name!r} already exists")
            with self.meta.transaction() as db:
                db.execute("INSERT INTO groups VALUES (?,?)", (name, iso(self.node.clock())))
                for i, m in enumerate(members):
                    db.execute("INSERT INTO group_members VALUES (?,?,?)", (name, m, i))
        return self.group_info(name)

    def group_members(self, name: str) -> list[str]:
        if not self.meta.one("SELECT name FROM groups WHERE name=?", name):
            raise NotFound(f"group {name!r} does not exist")
        return [r["aim_set"] for r in self.meta.query(
            "SELECT aim_set FROM group_members WHERE group_name=? ORDER BY position", name)]

    def group_info(self, name: str) -> dict:
        return {"name": name, "members": self.group_members(name)}

    def list_groups(self) -> list[dict]:
        return [self.group_info(r["name"]) for r in self.meta.query("SELECT name FROM groups ORDER BY name")]

    def delete_group(self, name: str) -> None:
        self.group_members(name)
        with self.meta.transaction() as db:
            db.execute("DELETE FROM group_members WHERE group_name=?", (name,))
            db.execute("DELETE FROM groups WHERE name=?", (name,))

    # -- markers -------------------------------------------------------------------------------------------
    def issue_marker(self, aim_set: str, snapshot: str | None, label: str | None = None) -> dict:
        aim = self.aim_set(aim_set)
        with aim.volume.lock:
            return self._append_markers([aim], snapshot=snapshot, label=label)[0]

    def issue_group_marker(self, group: str, snapshot_set: str, label: str | None = None) -> dict:
        """One write-order point across every member: all their source volumes are locked while
        the marker goes into each journal."""
        members = [self.aim_set(m) for m in self.group_members(group)]
        if not snapshot_set:
            raise InvalidInput("a group marker names the destination snapshot set to enable (--snapshot-set)")
        with barrier(a.volume for a in members):
            rows = self._append_markers(members, group=group, snapshot_set=snapshot_set, label=label)
        return self.group_marker(rows[0]["group_marker"])

    def _append_markers(self, sets: list[AimSet], *, snapshot: str | None = None, group: str | None = None,
                        snapshot_set: str | None = None, label: str | None = None) -> list[dict]:
        from .node import POINT_RE, iso, point_stamp
        if label is not None and not (POINT_RE.match(label) and len(label) <= MAX_LABEL):
            raise InvalidInput(f"invalid marker label {label!r}: use 1-{MAX_LABEL} letters, digits, '.', '_', ':', "
                               "'+' or '-'")
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
            if aim.overflowed:
                self.marker_result(marker_id, {"state": "failed", "error": f"AIM set {aim.name!r} is tracking dirty "
                                               "blocks (its initial sync, or the journal limit was reached): markers "
                                               "resume after the resync"})
            else:
                payload = {"id": marker_id, "snapshot": snapshot, "label": label, "point": point_stamp(now),
                           "issued_at": iso(now)}
                if group:
                    payload["group"] = {"id": group_id, "name": group, "snapshot_set": snapshot_set,
                                        "members": [a.id for a in sets]}
                seq, size = aim.journal.append(frames.MARKER, 0, json.dumps(payload).encode(), time.time_ns())
                aim.publish()  # a marker has no data to land (the barrier holds the volume lock)
                aim._appended(1, size, time.time_ns())
                self.meta.execute("UPDATE markers SET seq=? WHERE id=?", seq, marker_id)
            rows.append(self.marker(marker_id))
        return rows

    def _issue_time(self) -> datetime:
        """Now, but at least 1 ms after the previous marker: the destination names points by the
        millisecond, and two markers must never share a point name."""
        with self._stamp_lock:
            now = self.node.clock()
            if self._last_stamp is not None and now < self._last_stamp + timedelta(milliseconds=1):
                now = self._last_stamp + timedelta(milliseconds=1)
            self._last_stamp = now
            return now

    def marker_result(self, marker_id: int, result: dict) -> None:
        self.meta.execute("UPDATE markers SET state=?, applied_at=?, point=?, error=? WHERE id=? AND state='issued'",
                          result["state"], result.get("applied_at"), result.get("point"), result.get("error"),
                          marker_id)
        with self.waiters:
            self.waiters.notify_all()

    def marker(self, marker_id: int | str) -> dict:
        try:
            row = self.meta.one("SELECT * FROM markers WHERE id=?", int(marker_id))
        except (TypeError, ValueError):
            row = None
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

    def markers(self, aim_set: str | None = None, limit: int = 100) -> list[dict]:
        if aim_set:
            self.aim_set(aim_set)
            return self.meta.query("SELECT * FROM markers WHERE aim_set=? ORDER BY id DESC LIMIT ?", aim_set, limit)
        return self.meta.query("SELECT * FROM markers ORDER BY id DESC LIMIT ?", limit)


