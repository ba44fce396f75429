"""Block-exact verification of an AIM set, at one write-order point, while replication goes on.

The source freezes its volume (a private copy-on-write view, O(1)) and puts a verify marker into
the stream in the same instant, under the volume lock; the destination freezes its volume when it
applies that marker. Both views are the same write-order point, so they must be equal to the
byte, whatever is written meanwhile (DRBD's online verify compares live data, which is only exact
on a quiet volume). Each side digests its view in 1 MiB ranges (BLAKE3, 128 bits; holes are known
without reading them); only the destination's digests cross the wire (16 bytes a MiB). With
``repair``, the source sends the mismatched ranges of its view; the destination writes them into
its view and, for blocks the stream has not overwritten since the point, into its volume, and the
ranges are digested again. The views are dropped at the end (and at the next open, whatever).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import blake3

from ..errors import Conflict, EngineError
from ..storage.clones import Clone
from ..storage.fsutil import data_extents
from ..storage.volume import Volume
from . import frames, wire
from .supervisor import describe

if TYPE_CHECKING:
    from ..storage.storage import Storage
    from .aimset import AimSet

log = logging.getLogger("aimsnap.aim")
RANGE = 1 << 20
DIGEST_SIZE = 16
CHUNK = 16384  # digests per message (256 KiB)
REACH_TIMEOUT = 600.0  # how long the destination may take to reach the verify point
IO_TIMEOUT = 600.0
CLAIM_TIMEOUT = 60.0  # a destination's view that no verify connection claims within this is dropped


def view_key(set_id: str, verify_id: str) -> str:
    return f"verify-{set_id}-{verify_id}"


def digests(view: Clone, volume: Volume, indexes: list[int] | None = None,
            progress: Callable[[int], None] | None = None) -> dict[int, bytes]:
    """The digest of each range (all of them, or ``indexes``) of a frozen view. A range with no data
    in the volume's file nor in the view's own file is zeros, and is not read."""
    size = view.size
    count = (size + RANGE - 1) // RANGE
    has_data: set[int] = set()
    for fd in (volume.fd, view.fd):
        for start, end in data_extents(fd, size):
            has_data.update(range(start // RANGE, (end - 1) // RANGE + 1))
    zero: dict[int, bytes] = {}
    out = {}
    for i in indexes if indexes is not None else range(count):
        length = min(RANGE, size - i * RANGE)
        if i in has_data:
            out[i] = blake3.blake3(view.read(i * RANGE, length)).digest(DIGEST_SIZE)
        else:
            if length not in zero:
                zero[length] = blake3.blake3(bytes(length)).digest(DIGEST_SIZE)
            out[i] = zero[length]
        if progress:
            progress(length)
    return out


def _whole(found: dict[int, bytes]) -> str:
    return blake3.blake3(b"".join(found[i] for i in sorted(found))).hexdigest()[:32]


def _send(conn: wire.Connection, kind: str, body: dict | None = None, data: bytes = b"") -> None:
    """One message of the verify protocol: a frame (so that data and control share one reader)."""
    payload = json.dumps({"kind": kind, **(body or {})}).encode()
    conn.send(frames.Frame(frames.HEARTBEAT, 0, 0, time.time_ns(), payload))
    if data:
        conn.send(frames.Frame(frames.RESYNC_BLOCK, 0, (body or {}).get("offset", 0), time.time_ns(), data))


def _recv(conn: wire.Connection, kind: str | None = None) -> dict:
    f = conn.recv()
    try:
        m = json.loads(bytes(f.payload)) if f.type == frames.HEARTBEAT else None
    except ValueError:
        m = None
    if not isinstance(m, dict) or (kind is not None and m.get("kind") != kind):
        raise wire.WireError(f"unexpected {frames.NAMES.get(f.type, f.type)} frame in a verify")
    return m


def _send_digests(conn: wire.Connection, found: dict[int, bytes], broken: str | None = None) -> None:
    if broken:
        _send(conn, "digests", {"indexes": [], "last": True, "digests": "", "broken": broken})
        return
    items = sorted(found.items())
    for pos in range(0, max(len(items), 1), CHUNK):
        part = items[pos:pos + CHUNK]
        _send(conn, "digests", {"indexes": [i for i, _ in part], "last": pos + CHUNK >= len(items),
                                "digests": base64.b64encode(b"".join(d for _, d in part)).decode()})


def _recv_digests(conn: wire.Connection) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while True:
        m = _recv(conn, "digests")
        if m.get("broken"):
            raise EngineError(f"the destination's verify point broke: {m['broken']}")
        raw, indexes = base64.b64decode(str(m.get("digests", ""))), m.get("indexes")
        if not isinstance(indexes, list) or len(raw) != DIGEST_SIZE * len(indexes):
            raise wire.WireError("a verify digest message that does not add up")
        for n, i in enumerate(indexes):
            out[int(i)] = raw[n * DIGEST_SIZE:(n + 1) * DIGEST_SIZE]
        if m.get("last"):
            return out


# -- the source ------------------------------------------------------------------------------------------
class Verification:
    """One verify of an AIM set, on a thread of its own; :meth:`status` says how far it is."""

    def __init__(self, aim: AimSet, storage: Storage, repair: bool, on_done: Callable[[dict], None],
                 reach_timeout: float | None = None) -> None:
        """``reach_timeout``: how long the destination may take to reach the verify point (a
        switchover's final verify gets what is left of its own timeout)."""
        self.aim, self.storage, self.repair, self.on_done = aim, storage, repair, on_done
        self.reach_timeout = REACH_TIMEOUT if reach_timeout is None else reach_timeout
        self.id = uuid.uuid4().hex[:12]
        self.state, self.error, self.result = "running", None, None
        self.started_at = time.time()
        self.bytes_compared = 0
        self.cancelled = threading.Event()  # the node is closing: stop at the next range
        self.thread = threading.Thread(target=self.run, name=f"aim-verify-{aim.name}", daemon=True)

    def status(self) -> dict:
        out = {"id": self.id, "aim_set": self.aim.name, "state": self.state, "repair": self.repair,
               "started_at": self.started_at, "bytes_compared": self.bytes_compared, "size": self.aim.volume.size}
        if self.result:
            out.update(self.result)
        if self.error:
            out["error"] = self.error
        return out

    def run(self) -> None:
        key = f"verify-{self.id}"
        self.marker_placed = False
        try:
            self.result = self._run(key)
            self.state = "done"
            log.info("aim %s: verify %s: %d mismatched range(s), %d repaired", self.aim.name, self.id,
                     len(self.result["ranges"]), self.result["repaired_ranges"])
        except Exception as e:  # noqa: BLE001 - said in the status, the log and the outcome
            self.state, self.error = "failed", describe(e, (EngineError, OSError, wire.WireError))
            log.warning("aim %s: verify %s failed: %s", self.aim.name, self.id, self.error)
            if self.marker_placed:
                self._abort()
        finally:
            self.storage.thaw(key)
            self.on_done(self.status())

    def _run(self, key: str) -> dict:
        aim, vol, rec = self.aim, self.aim.volume, self.aim.record
        with vol.lock:  # the frozen view and the marker: one write-order point
            if rec.overflowed or rec.resync_from is not None:
                raise Conflict(f"AIM set {aim.name!r} is resynchronising: verify it once it replicates")
            view = self.storage.freeze(vol, key)
            seq = aim.observer.append_marker({"verify": self.id})
            epoch = aim.observer.epoch
        self.marker_placed = True
        aim.journal.sync()
        self._wait_reached(seq, epoch)
        sock = aim.connector(rec.dest_host, rec.dest_port, tls=aim.tls)
        conn = wire.Connection(sock)
        try:
            conn.settimeout(IO_TIMEOUT)
            wire.client_handshake(sock, aim.token, {"op": "verify", "set_id": rec.id, "verify_id": self.id})
            remote: dict[int, bytes] = {}
            failed: list[BaseException] = []

            def fetch_remote() -> None:
                try:
                    remote.update(_recv_digests(conn))
                except BaseException as e:  # noqa: BLE001 - raised below, in this thread's caller
                    failed.append(e)
            fetch = threading.Thread(target=fetch_remote, name=f"aim-verify-fetch-{aim.name}", daemon=True)
            fetch.start()
            local = digests(view, vol, progress=self._progress)
            fetch.join(IO_TIMEOUT)
            if failed:
                raise failed[0]
            if view.broken:
                raise EngineError(f"the source's verify point broke: {view.broken}")
            if set(remote) != set(local):
                raise wire.WireError("the destination sent digests of other ranges")
            mismatched = sorted(i for i in local if local[i] != remote[i])
            still = mismatched
            if self.repair and mismatched:
                still = self._repair(conn, view, vol, mismatched, local)
            _send(conn, "done")
        finally:
            conn.close()
        compared = vol.size
        return {"mismatched_ranges": len(still), "ranges": [i * RANGE for i in mismatched],
                "mismatched_blocks": self._blocks(mismatched, vol), "repaired_ranges": len(mismatched) - len(still),
                "remaining": [i * RANGE for i in still], "bytes_compared": compared,
                "range_size": RANGE, "seconds": round(time.time() - self.started_at, 3),
                "digest_bytes": len(remote) * DIGEST_SIZE, "verified_at": time.time(),
                # the whole view in one value (BLAKE3 of the ranges' digests, in order): each side's
                "digest": _whole(local), "destination_digest": _whole(remote)}

    def _abort(self) -> None:
        """Best effort: the destination drops its view of this verify (if it made one, and is
        reachable); else it goes at the next verify of the set, or the destination's restart."""
        aim, rec = self.aim, self.aim.record
        try:
            sock = aim.connector(rec.dest_host, rec.dest_port, tls=aim.tls)
            conn = wire.Connection(sock)
            try:
                conn.settimeout(10)
                wire.client_handshake(sock, aim.token, {"op": "verify", "set_id": rec.id, "verify_id": self.id,
                                                        "abort": True})
            finally:
                conn.close()
        except (OSError, wire.WireError, EngineError):
            pass

    @staticmethod
    def _blocks(indexes: list[int], vol: Volume) -> int:
        """Blocks in the mismatched ranges (the digests do not say which block of a range differs)."""
        return sum((min((i + 1) * RANGE, vol.size) - i * RANGE + vol.block_size - 1) // vol.block_size
                   for i in indexes)

    def _progress(self, n: int) -> None:
        if self.cancelled.is_set():
            raise EngineError("the node is stopping")
        self.bytes_compared += n

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop (the node is closing) and wait for the thread, before the files it reads go."""
        self.cancelled.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _wait_reached(self, seq: int, epoch: int) -> None:
        aim, deadline = self.aim, time.monotonic() + self.reach_timeout
        while True:
            if aim.observer.epoch != epoch or aim.record.overflowed or aim.record.resync_from is not None:
                raise Conflict(f"AIM set {aim.name!r} went over its journal limit or resynchronised before the "
                               "destination reached the verify point: verify it again once it replicates")
            if aim.record.acked_seq >= seq:
                return
            if aim.closing or self.cancelled.is_set():
                raise EngineError("the node is stopping")
            if time.monotonic() > deadline:
                raise EngineError(f"the destination did not reach the verify point within "
                                  f"{self.reach_timeout:.0f}s: "
                                  f"is AIM set {aim.name!r} replicating? ({aim.state.value})")
            time.sleep(0.05)

    def _repair(self, conn: wire.Connection, view: Clone, vol: Volume, bad: list[int],
                local: dict[int, bytes]) -> list[int]:
        """Send the source's content of the mismatched ranges; the destination's digests after."""
        for i in bad:
            _send(conn, "repair", {"offset": i * RANGE}, view.read(i * RANGE, min(RANGE, vol.size - i * RANGE)))
        _send(conn, "digests_of", {"indexes": bad})
        after = _recv_digests(conn)
        return [i for i in bad if after.get(i) != local[i]]


# -- the destination -------------------------------------------------------------------------------------
def serve(storage: Storage, conn: wire.Connection, view: Clone, volume: Volume) -> None:
    """The destination's half, on the verify connection: digests of its view, then repairs."""
    conn.settimeout(IO_TIMEOUT)
    found = digests(view, volume)
    _send_digests(conn, found, view.broken)
    count = (volume.size + RANGE - 1) // RANGE
    while True:
        m = _recv(conn)
        if m["kind"] == "done":
            return
        if m["kind"] == "repair":
            f = conn.recv()
            if f.type != frames.RESYNC_BLOCK or f.offset % RANGE or f.offset != m.get("offset"):
                raise wire.WireError("a verify repair without its data")
            repair_range(view, volume, f.offset, bytes(f.payload))
        elif m["kind"] == "digests_of":
            indexes = m.get("indexes")
            if not isinstance(indexes, list) or not all(isinstance(i, int) and 0 <= i < count for i in indexes):
                raise wire.WireError("a verify asking for ranges that do not exist")
            _send_digests(conn, digests(view, volume, indexes))
        else:
            raise wire.WireError(f"unexpected verify message {m['kind']!r}")


def repair_range(view: Clone, volume: Volume, offset: int, data: bytes) -> None:
    """The source's content of a range at the verify point: into the view, and into the volume
    where the stream has not overwritten it since (there the view reads the volume)."""
    if offset < 0 or offset + len(data) > volume.size:
        raise wire.WireError(f"a repair beyond the end of {volume.name}")
    bs = volume.block_size
    with volume.lock:  # the applier writes under it: no stream write lands between the two
        first, last = offset // bs, (offset + len(data) - 1) // bs
        stale = [b for b in range(first, last + 1) if not view.present.test(b)]
        view.write_many([(offset, data)])  # now the view holds the range: the volume's copy-up skips it
        writes, run = [], []
        for b in stale + [-2]:  # runs of consecutive blocks, landed as one batch
            if run and b != run[-1] + 1:
                start, end = run[0] * bs, min((run[-1] + 1) * bs, offset + len(data))
                writes.append((start, data[start - offset:end - offset]))
                run = []
            run.append(b)
        if writes:
            volume.apply_writes(writes)
    volume.flush()
    view.flush()
    log.info("aim verify: repaired %d bytes of %s at %d (%d block(s) in the volume)", len(data), volume.name,
             offset, len(stale))
