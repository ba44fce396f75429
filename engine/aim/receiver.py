"""The destination side of AIM: the AIM port. Authenticates each connection, answers claims,
probes and releases of destination volumes, and hands each stream to an :class:`~.applier.Applier`
on the connection's own thread (one stream per set: a reconnect replaces a half-dead one)."""

import json
import logging
import socket
import ssl
import threading

from ..net.listener import ThreadedListener, shut
from ..storage.storage import Storage
from . import verify, wire
from .applier import Applier, Binding, StorageFault
from .barriers import GroupBarriers
from .supervisor import describe
from .wire import Connection, WireError

log = logging.getLogger("aimsnap.aim.receiver")


class Receiver:
    def __init__(self, storage: Storage, token: str, tls: ssl.SSLContext | None = None) -> None:
        self.storage, self.token, self.tls = storage, token, tls
        self.groups = GroupBarriers(storage.meta)
        self.streams: dict[str, socket.socket] = {}  # set id -> its current connection
        self.lock = threading.Lock()
        self.listener = ThreadedListener("aim", self.serve)
        self.rejected = 0  # connections refused: authentication, protocol, checksum
        self.errors = 0  # streams that failed here for any other reason (logged with it)

    # -- bindings: which AIM set replicates into which volume --------------------------------------------
    def binding(self, set_id: str) -> Binding | None:
        row = self.storage.meta.one("SELECT * FROM aim_targets WHERE set_id=?", set_id)
        if not row:
            return None
        return Binding(row["set_id"], row["set_name"], row["volume"], row["applied_seq"], row["consistent_from"],
                       bool(row["resyncing"]))

    def _claim(self, hello: dict) -> dict:
        volume, set_id = str(hello.get("volume", "")), str(hello.get("set_id", ""))
        vol = self.storage.volumes.get(volume)
        if vol is None or vol.role != "volume":
            return {"error": f"destination volume {volume!r} does not exist on the destination node"}
        if hello.get("size") != vol.size:
            return {"error": f"destination volume {volume!r} is {vol.size} bytes, the source is {hello.get('size')}: "
                             "they must be the same size"}
        row = self.storage.meta.one("SELECT set_id, set_name FROM aim_targets WHERE volume=?", volume)
        if row and row["set_id"] != set_id:
            return {"error": f"destination volume {volume!r} is already the destination of AIM set {row['set_name']!r}"}
        if hello.get("op") == "claim" and not row:
            self.storage.meta.execute(
                "INSERT INTO aim_targets (set_id, set_name, volume, source, created_at) VALUES (?,?,?,?,datetime('now'))",
                set_id, str(hello.get("set_name", "")), volume, str(hello.get("source", "")))
            vol.replica_of = str(hello.get("set_name", ""))
        return {"size": vol.size}

    def _release(self, set_id: str) -> None:
        b = self.binding(set_id)
        if b:
            self.storage.meta.execute("DELETE FROM aim_targets WHERE set_id=?", set_id)
            if b.volume in self.storage.volumes:
                self.storage.volumes[b.volume].replica_of = None

    # -- serving ----------------------------------------------------------------------------------------
    def start(self, sock: socket.socket) -> None:
        self.listener.start(sock)

    def stop(self) -> None:
        self.listener.stop()
        with self.lock:  # TLS connections are wrappers the listener does not know
            for conn in self.streams.values():
                shut(conn)

    def serve(self, raw: socket.socket, peer: object) -> None:
        """One connection, on its own thread (the listener's), until it ends."""
        conn = raw
        conn.settimeout(30)
        set_id = None
        try:
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as e:
                    raise WireError(f"TLS handshake failed: {e}") from None
            hello, challenge, nonce = wire.server_handshake(conn, self.token)
            op, set_id = hello.get("op"), str(hello.get("set_id", ""))
            if op in ("probe", "claim"):
                answer = self._claim(hello)
                if "error" in answer:
                    wire.send_message(conn, {"ok": False, "error": answer["error"]})
                else:
                    wire.server_accept(conn, self.token, challenge, nonce, **answer)
                return
            if op == "release":
                self._release(set_id)
                wire.server_accept(conn, self.token, challenge, nonce)
                return
            if op == "verify":
                self._verify(conn, hello, challenge, nonce)
                return
            binding = self.binding(set_id) if op == "stream" else None
            if binding is None:
                wire.send_message(conn, {"ok": False, "error": "this AIM set has no destination volume here "
                                                                  "(create the AIM set again)"})
                return
            with self.lock:  # one stream per set: a reconnect replaces a half-dead connection
                old = self.streams.get(set_id)
                if old is not None:
                    shut(old)
                self.streams[set_id] = conn
            wire.server_accept(conn, self.token, challenge, nonce, applied_seq=binding.applied_seq,
                               resyncing=binding.resyncing,
                               marker_results=self._results(set_id, hello.get("outstanding_markers")))
            conn.settimeout(120)  # the source sends a heartbeat every few seconds
            Applier(self.storage, self.groups, Connection(conn), binding).run()
        except WireError as e:
            self.rejected += 1
            log.warning("aim %s: closing connection: %s", peer, e)
        except (ConnectionError, OSError, TimeoutError):
            pass  # the source went away or the link failed: it reconnects (and says so)
        except StorageFault:
            self.errors += 1  # logged by the applier and told to the source, which retries with backoff
        except Exception as e:  # noqa: BLE001 - a fault applying the stream: said, counted, the source retries
            self.errors += 1
            log.error("aim %s: stream of set %s failed: %s", peer, set_id, describe(e), exc_info=e)
        finally:
            with self.lock:
                if set_id and self.streams.get(set_id) is conn:
                    del self.streams[set_id]
            if conn is not raw:
                conn.close()

    def _verify(self, conn: socket.socket, hello: dict, challenge: bytes, nonce: bytes) -> None:
        """The destination's half of a verify: its frozen view, made when it applied the marker."""
        set_id = str(hello.get("set_id", ""))
        key = verify.view_key(set_id, str(hello.get("verify_id", "")))
        binding, view = self.binding(set_id), self.storage.frozen.get(key)
        if hello.get("abort"):  # the source's verify failed: this view is of no use
            self.storage.thaw(key)
            wire.server_accept(conn, self.token, challenge, nonce)
            return
        if binding is None or view is None:
            wire.send_message(conn, {"ok": False, "error": "no verify point here (the destination restarted, "
                                                           "or never reached the verify marker)"})
            return
        view.claimed = True
        wire.server_accept(conn, self.token, challenge, nonce)
        try:
            verify.serve(self.storage, Connection(conn), view, self.storage.volume(binding.volume))
        finally:
            self.storage.thaw(key)

    def _results(self, set_id: str, ids: object) -> list[dict]:
        """Results of markers the source still waits for (their acknowledgement may have been lost)."""
        if not isinstance(ids, list):
            return []
        out = []
        for marker_id in ids[:1000]:
            row = self.storage.meta.one("SELECT result FROM applied_markers WHERE set_id=? AND marker_id=?",
                                     set_id, str(marker_id))
            if row:
                out.append(json.loads(row["result"]))
        return out
