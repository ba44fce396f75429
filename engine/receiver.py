"""The destination side of AIM: the AIM port. One thread per incoming stream applies entries
to the destination volume in sequence order, acknowledges what is durable, and turns markers
into enabled snapshots (or, for a group, one snapshot set once every member has arrived)."""

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

from . import aimwire, frames
from .aimwire import WireError
from .errors import AlreadyExists, EngineError
from .listener import ThreadedListener, shut
from .volume import Volume

log = logging.getLogger("aimsnap.aim.receiver")
ACK_EVERY_BYTES = 8 << 20
ACK_DELAY = 0.01  # seconds of quiet before applied writes are flushed and acknowledged
GROUP_TIMEOUT = 300.0


@dataclass
class Binding:
    set_id: str
    set_name: str
    volume: str
    applied_seq: int
    consistent_from: int
    resyncing: bool


class GroupBarriers:
    """Members of a group marker wait here until all have reached it; the last one enables the
    snapshot set. A result, once known, is kept in the node's metadata for late or repeated arrivals."""

    def __init__(self, meta, timeout: float = GROUP_TIMEOUT) -> None:
        self.meta, self.timeout = meta, timeout
        self.cond = threading.Condition()
        self.arrived: dict[str, set[str]] = {}
        self.results: dict[str, dict] = {}

    def stored(self, key: str) -> dict | None:
        row = self.meta.one("SELECT result FROM applied_group_markers WHERE group_marker=?", key)
        return json.loads(row["result"]) if row else None

    def arrive(self, key: str, me: str, members: list[str], enable) -> dict:
        with self.cond:
            result = self.results.get(key) or self.stored(key)
            if result is not None:
                return result
            self.arrived.setdefault(key, set()).add(me)
            if self.arrived[key] >= set(members):
                result = enable()
                self._finish(key, result)
                return result
            deadline = time.monotonic() + self.timeout
            while key not in self.results:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(members) - self.arrived[key])
                    self._finish(key, {"state": "failed", "error": f"group member(s) {', '.join(missing)} did not "
                                       f"reach the marker within {self.timeout:.0f}s"})
                    break
                self.cond.wait(left)
            return self.results[key]

    def _finish(self, key: str, result: dict) -> None:
        self.results[key] = result
        self.arrived.pop(key, None)
        self.meta.execute("INSERT OR REPLACE INTO applied_group_markers VALUES (?,?)", key, json.dumps(result))
        self.cond.notify_all()


class Receiver:
    def __init__(self, node, token: str, tls=None) -> None:
        self.node, self.token, self.tls = node, token, tls
        self.groups = GroupBarriers(node.meta)
        self.streams: dict[str, socket.socket] = {}  # set id -> its current connection
        self.lock = threading.Lock()
        self.listener = ThreadedListener("aim", self._serve)
        self.rejected = 0

    # -- bindings: which AIM set replicates into which volume --------------------------------------------
    def binding(self, set_id: str) -> Binding | None:
        row = self.node.meta.one("SELECT * FROM aim_targets WHERE set_id=?", set_id)
        if not row:
            return None
        return Binding(row["set_id"], row["set_name"], row["volume"], row["applied_seq"], row["consistent_from"],
                       bool(row["resyncing"]))

    def _claim(self, hello: dict) -> dict:
        volume, set_id = str(hello.get("volume", "")), str(hello.get("set_id", ""))
        vol = self.node.volumes.get(volume)
        if vol is None or vol.role != "volume":
            return {"error": f"destination volume {volume!r} does not exist on the destination node"}
        if hello.get("size") != vol.size:
            return {"error": f"destination volume {volume!r} is {vol.size} bytes, the source is {hello.get('size')}: "
                             "they must be the same size"}
        row = self.node.meta.one("SELECT set_id, set_name FROM aim_targets WHERE volume=?", volume)
        if row and row["set_id"] != set_id:
            return {"error": f"destination volume {volume!r} is already the destination of AIM set {row['set_name']!r}"}
        if hello.get("op") == "claim" and not row:
            self.node.meta.execute(
                "INSERT INTO aim_targets (set_id, set_name, volume, source, created_at) VALUES (?,?,?,?,datetime('now'))",
                set_id, str(hello.get("set_name", "")), volume, str(hello.get("source", "")))
            vol.replica_of = str(hello.get("set_name", ""))
        return {"size": vol.size}

    def _release(self, set_id: str) -> None:
        b = self.binding(set_id)
        if b:
            self.node.meta.execute("DELETE FROM aim_targets WHERE set_id=?", set_id)
            if b.volume in self.node.volumes:
                self.node.volumes[b.volume].replica_of = None

    # -- serving ----------------------------------------------------------------------------------------
    def start(self, sock: socket.socket) -> None:
        self.listener.start(sock)

    def stop(self) -> None:
        self.listener.stop()
        with self.lock:  # TLS connections are wrappers the listener does not know
            for conn in self.streams.values():
                shut(conn)

    def _serve(self, raw: socket.socket, peer: object) -> None:
        conn = raw
        conn.settimeout(30)
        set_id = None
        try:
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as e:
                    raise WireError(f"TLS handshake failed: {e}") from None
            hello, challenge, nonce = aimwire.server_handshake(conn, self.token)
            op, set_id = hello.get("op"), str(hello.get("set_id", ""))
            if op in ("probe", "claim"):
                answer = self._claim(hello)
                if "error" in answer:
                    aimwire.send_message(conn, {"ok": False, "error": answer["error"]})
                else:
                    aimwire.server_accept(conn, self.token, challenge, nonce, **answer)
                return
            if op == "release":
                self._release(set_id)
                aimwire.server_accept(conn, self.token, challenge, nonce)
                return
            binding = self.binding(set_id) if op == "stream" else None
            if binding is None:
                aimwire.send_message(conn, {"ok": False, "error": "this AIM set has no destination volume here "
                                                                  "(create the AIM set again)"})
                return
            with self.lock:  # one stream per set: a reconnect replaces a half-dead connection
                old = self.streams.get(set_id)
                if old is not None:
                    shut(old)
                self.streams[set_id] = conn
            aimwire.server_accept(conn, self.token, challenge, nonce, applied_seq=binding.applied_seq,
                                  resyncing=binding.resyncing,
                                  marker_results=self._results(set_id, hello.get("outstanding_markers")))
            conn.settimeout(120)  # the source sends a heartbeat every few seconds
            self._apply_loop(conn, binding)
        except WireError as e:
            self.rejected += 1
            log.warning("aim %s: closing connection: %s", peer, e)
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            with self.lock:
                if set_id and self.streams.get(set_id) is conn:
                    del self.streams[set_id]
            if conn is not raw:
                conn.close()

    def _results(self, set_id: str, ids: object) -> list[dict]:
        """Results of markers the source still waits for (their acknowledgement may have been lost)."""
        if not isinstance(ids, list):
            return []
        out = []
        for marker_id in ids[:1000]:
            row = self.node.meta.one("SELECT result FROM applied_markers WHERE set_id=? AND marker_id=?",
                                     set_id, str(marker_id))
            if row:
                out.append(json.loads(row["result"]))
        return out

    # -- applying ---------------------------------------------------------------------------------------
    def _apply_loop(self, conn: socket.socket, b: Binding) -> None:
        vol = self.node.volume(b.volume)
        reader = aimwire.FrameReader(conn)
        applied = acked = b.applied_seq
        unacked_bytes = 0
        while True:
            # a short pause in the stream is not idleness: one fdatasync covers what comes within it
            batch = reader.batch(wait=ACK_DELAY if applied != acked else None)
            if (not batch or unacked_bytes >= ACK_EVERY_BYTES) and applied != acked:
                vol.flush()  # idle, or enough is unacknowledged: make it durable, then say so
                self.node.meta.execute("UPDATE aim_targets SET applied_seq=? WHERE set_id=?", applied, b.set_id)
                acked, unacked_bytes = applied, 0
                self._send_ack(conn, applied, [])
            writes: list[tuple[int, memoryview]] = []  # a run of writes lands as one batch
            for f in batch:
                if f.type == frames.WRITE and _in_order(f, applied):
                    writes.append((f.offset, f.payload))  # type: ignore[arg-type]
                    applied = f.seq
                    unacked_bytes += len(f.payload)
                    continue
                if writes:
                    vol.apply_writes(writes)
                    writes = []
                if f.type == frames.ZERO and _in_order(f, applied):
                    vol.apply_zeroes(f.offset, f.length)
                    applied = f.seq
                elif f.type == frames.MARKER and _in_order(f, applied):
                    result = self._marker(b, vol, f)
                    applied = acked = f.seq
                    unacked_bytes = 0
                    self._send_ack(conn, applied, [result])
                elif f.type == frames.RESYNC_BEGIN:
                    self.node.meta.execute("UPDATE aim_targets SET resyncing=1 WHERE set_id=?", b.set_id)
                elif f.type == frames.RESYNC_BLOCK:
                    vol.apply_write(f.offset, f.payload)
                elif f.type == frames.RESYNC_END:
                    info = json.loads(f.payload)
                    vol.flush()
                    b.consistent_from, applied = int(info["consistent_from"]), f.seq
                    self.node.meta.execute("UPDATE aim_targets SET resyncing=0, applied_seq=?, consistent_from=? "
                                           "WHERE set_id=?", applied, b.consistent_from, b.set_id)
                    acked = applied
                    self._send_ack(conn, applied, [])
                elif f.type == frames.HEARTBEAT and applied == acked:
                    self._send_ack(conn, applied, [])  # tells the source we are alive and where we are
            if writes:
                vol.apply_writes(writes)

    def _send_ack(self, conn: socket.socket, seq: int, markers: list[dict]) -> None:
        payload = json.dumps({"markers": markers}).encode() if markers else b""
        aimwire.send_frame(conn, frames.Frame(frames.ACK, seq, 0, time.time_ns(), payload))

    def _marker(self, b: Binding, vol: Volume, f: frames.Frame) -> dict:
        """Everything before the marker is applied: flush, enable the pre-configured snapshot (or
        the group's snapshot set), and record the result with the new applied position atomically."""
        m = json.loads(f.payload)
        key = str(m["id"])
        row = self.node.meta.one("SELECT result FROM applied_markers WHERE set_id=? AND marker_id=?", b.set_id, key)
        if row:
            return json.loads(row["result"])
        vol.flush()
        if f.seq < b.consistent_from:
            result = {"state": "failed", "error": "the marker was issued during a resynchronisation: the destination "
                                                  "image was not consistent at that point"}
        elif m.get("group"):
            g = m["group"]
            result = self.groups.arrive(g["id"], b.set_id, g["members"],
                                        lambda: self._enable_set(g["snapshot_set"], m))
        else:
            result = self._enable(vol, m)
        result = {"id": m["id"], "group_marker": (m.get("group") or {}).get("id"), **result}
        with self.node.meta.transaction() as db:
            db.execute("INSERT OR REPLACE INTO applied_markers VALUES (?,?,?)", (b.set_id, key, json.dumps(result)))
            db.execute("UPDATE aim_targets SET applied_seq=? WHERE set_id=?", (f.seq, b.set_id))
        log.info("aim %s: marker %s %s%s", b.set_name, m["id"], result["state"],
                 f" ({result.get('error')})" if result.get("error") else "")
        return result

    @staticmethod
    def _point_name(m: dict) -> str:
        """LABEL.TIMESTAMP, or the timestamp: unique per marker (the source never stamps two markers
        in the same millisecond), so a point that already exists was made by this very marker."""
        return f"{m['label']}.{m['point']}" if m.get("label") else m["point"]

    def _enable(self, vol: Volume, m: dict) -> dict:
        name = m.get("snapshot")
        rel = self.node.snapshots.get(name) if name else None
        if rel is None:
            return {"state": "failed", "error": f"snapshot {name!r} is not pre-configured on the destination node"}
        if rel.source is not vol:
            return {"state": "failed", "error": f"snapshot {name!r} is a snapshot of {rel.source.name!r}, "
                                               f"not of the destination volume {vol.name!r}"}
        point = self._point_name(m) if rel.type == "differential" else None
        try:
            r = self.node.enable_snapshot(name, point)
        except AlreadyExists:  # enabled before a crash that came before recording it
            r = {"point": point, "enabled_at": None}
        except EngineError as e:
            return {"state": "failed", "error": str(e)}
        return {"state": "applied", "point": r["point"], "applied_at": r["enabled_at"] or _now()}

    def _enable_set(self, set_name: str, m: dict) -> dict:
        try:
            r = self.node.enable_snapshot_set(set_name, self._point_name(m))
        except AlreadyExists:
            return {"state": "applied", "point": self._point_name(m), "applied_at": _now()}
        except EngineError as e:
            return {"state": "failed", "error": str(e)}
        return {"state": "applied", "point": r["point"], "applied_at": r["enabled_at"]}


def _in_order(f: frames.Frame, applied: int) -> bool:
    """Whether a journal entry is the next to apply; False for one applied before a reconnect."""
    if f.seq <= applied:
        return False
    if f.seq != applied + 1:
        raise WireError(f"sequence gap: expected {applied + 1}, got {f.seq}")
    return True


def _now() -> str:
    from .node import iso, utcnow
    return iso(utcnow())
