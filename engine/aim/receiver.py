"""The destination side of AIM: the AIM port. Authenticates each connection, answers claims,
probes and releases of destination volumes, refuses fenced sources, hands each stream to an
:class:`~.applier.Applier` that runs in turns on the node's reactor (one stream per set: a
reconnect replaces a half-dead one), and serves the peer's half of verifies and role changes.

The listener's thread for a connection does the handshake only: once streaming, a connection
holds no thread, so the number of sets a node receives is not bounded by threads (nor by the
listener's limit, which counts handshakes in progress)."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from ..net.listener import ThreadedListener
from . import verify, wire
from .applier import Applier, StorageFault
from .supervisor import describe
from .targets import Stream
from .wire import Connection, WireError

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("aimsnap.aim.receiver")


class Receiver:
    def __init__(self, node: Node, token: str, tls: ssl.SSLContext | None = None, cert_pem: str | None = None) -> None:
        """``cert_pem``: the certificate ``tls`` serves, which this node's own sets hand their
        destinations (what a reverse set pins)."""
        self.node, self.storage, self.token, self.tls, self.cert_pem = node, node, token, tls, cert_pem
        self.targets = node.replication.targets
        self.listener = ThreadedListener("aim", self.serve, refuses=False)
        self.rejected = 0  # connections refused: authentication, protocol, checksum
        self.errors = 0  # streams that failed here for any other reason (logged with it)

    # -- serving ----------------------------------------------------------------------------------------
    def start(self, sock: socket.socket) -> None:
        self.node.replication.receiving(sock.getsockname()[1], self.token, self.cert_pem)
        self.listener.start(sock)

    def stop(self) -> None:
        self.listener.stop()
        self.targets.stop_all()  # TLS connections are wrappers the listener does not know

    def token_for(self, hello: dict) -> str:
        """The set's own secret where this node keeps one (it was, or is, the set's source: role
        changes and reverse streams authenticate with it); else the node's token."""
        set_id = str(hello.get("set_id", ""))
        return self.targets.secret(set_id) or self.node.replication.secret_of(set_id) or self.token

    def serve(self, raw: socket.socket, peer: object) -> bool:
        """One connection, on the listener's thread, until its handshake is done: True if a
        stream's applier keeps the connection (and closes it when it ends)."""
        conn = raw
        conn.settimeout(30)
        set_id, stream = "", None
        try:
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ValueError) as e:
                    raise WireError(f"TLS handshake failed: {e}") from None
            hello, hs = wire.server_handshake(conn, self.token_for)
            op, set_id = hello.get("op"), str(hello.get("set_id", ""))
            if op in ("probe", "claim"):
                answer = self.targets.claim(hello)
                if "error" in answer:
                    wire.send_message(conn, {"ok": False, "error": answer["error"]})
                else:
                    hs.accept(**answer)
            elif op == "release":
                self.targets.release(set_id, _generation(hello))
                hs.accept()
            elif op == "verify":
                self._verify(conn, hello, hs)
            elif op in ("promote", "failback"):
                self.node.replication.roles.serve(op, Connection(conn), hello, hs, _host(peer))
            elif op != "stream":
                wire.send_message(conn, {"ok": False, "error": f"unknown operation {op!r}"})
            elif not self._fenced(hs, hello, peer):  # before taking the set's stream from anyone
                stream = self.targets.attach(set_id, conn)
                if self._stream(conn, hello, hs, peer, stream):
                    return True
        except BaseException as e:  # noqa: BLE001 - said and counted, like a stream's end
            self._ended(e, peer, set_id)
        if stream is not None:
            self.targets.detach(set_id, stream)
        if conn is not raw:
            conn.close()
        return False

    def _stream(self, conn: socket.socket, hello: dict, hs: wire.Handshake, peer: object, stream: Stream) -> bool:
        """Accept a stream and start its applier; False if refused."""
        set_id = str(hello.get("set_id", ""))
        # again, now that no other connection streams the set: a promotion that committed
        # meanwhile stopped the streams it found, and this one is seen here
        if self._fenced(hs, hello, peer):
            return False
        target = self.targets.get(set_id)
        if target is None:
            here = self.node.replication.by_id(set_id)
            wire.send_message(conn, {"ok": False, "error": "this node is still the AIM set's source (a role change "
                                     "is completing here): retry" if here else "this AIM set has no destination "
                                     "volume here (create the AIM set again)"})
            return False
        self.targets.announced(target, _host(peer), hello.get("aim_port"))
        hs.accept(applied_seq=target.applied_seq, resyncing=target.resyncing,
                  marker_results=self._results(set_id, hello.get("outstanding_markers")))
        conn.settimeout(self.targets.stream_timeout)  # a blocking send (an acknowledgement) to a source that stopped reading

        def ended(e: BaseException) -> None:
            self._ended(e, peer, set_id)
            self.targets.detach(set_id, stream)
            conn.close()
        stream.applier = Applier(self.storage, self.targets.groups, Connection(conn), target,
                                 self.targets.reactor, ended, self.targets.stream_timeout)
        stream.applier.start()
        return True

    def _ended(self, e: BaseException, peer: object, set_id: str) -> None:
        """Why a connection ended, said and counted."""
        if isinstance(e, WireError):
            self.rejected += 1
            log.warning("aim %s: closing connection: %s", peer, e)
        elif isinstance(e, TimeoutError):  # the applier's: a source silent for the stream timeout
            log.warning("aim %s: stream of set %s ended: %s", peer, set_id, e)
        elif isinstance(e, (ConnectionError, OSError)):
            pass  # the source went away or the link failed: it reconnects (and says so)
        elif isinstance(e, StorageFault):
            self.errors += 1  # logged by the applier and told to the source, which retries with backoff
        else:  # a fault applying the stream: said, counted, the source retries
            self.errors += 1
            log.error("aim %s: stream of set %s failed: %s", peer, set_id, describe(e), exc_info=e)

    def _fenced(self, hs: wire.Handshake, hello: dict, peer: object) -> bool:
        """Refuse (with the proof of the secret, so the source trusts it and stops) a stream of a
        promoted set, or of a generation older than this node's; True if refused."""
        set_id = str(hello.get("set_id", ""))
        generation = _generation(hello)
        refusal = self.targets.refusal(self.targets.get(set_id), generation,
                                       self.node.replication.promoted_here(set_id, generation))
        if refusal is None:
            return False
        message = self.targets.fenced_message(refusal)
        log.warning("aim %s: refused a stream from %s: %s", hello.get("set_name"), peer, message)
        hs.refuse(message, fenced=refusal)
        return True

    def _verify(self, conn: socket.socket, hello: dict, hs: wire.Handshake) -> None:
        """The destination's half of a verify: its frozen view, made when it applied the marker."""
        set_id = str(hello.get("set_id", ""))
        key = verify.view_key(set_id, str(hello.get("verify_id", "")))
        target, view = self.targets.get(set_id), self.storage.frozen.get(key)
        if hello.get("abort"):  # the source's verify failed: this view is of no use
            self.storage.thaw(key)
            hs.accept()
            return
        if target is None or view is None:
            wire.send_message(conn, {"ok": False, "error": "no verify point here (the destination restarted, "
                                                           "or never reached the verify marker)"})
            return
        view.claimed = True
        hs.accept()
        try:
            verify.serve(self.storage, Connection(conn), view, self.storage.volume(target.volume))
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


def _host(peer: object) -> str:
    """The peer's address as the listener gives it (a (host, port) tuple for TCP)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _generation(hello: dict) -> int:
    g = hello.get("generation")
    return g if isinstance(g, int) and not isinstance(g, bool) and g > 0 else 1
