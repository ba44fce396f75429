"""Accept connections on a listening socket, one daemon thread each (the NBD and AIM ports).

A handler that hands its connection on (an AIM stream, to the reactor) returns True: the
connection then no longer counts against ``max_connections`` and is not closed here. At the
limit, a listener that ``refuses`` closes new connections (NBD: it protects the node from too many
hosts); one that does not leaves them in the kernel's accept queue until a handshake ends (AIM:
a thousand sets reconnecting at once are served in turn, none refused)."""

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("aimsnap.listener")


def shut(sock: socket.socket) -> None:
    """Wake whoever is blocked on ``sock``; the owner closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ThreadedListener:
    def __init__(self, name: str, handle: Callable[[socket.socket, object], bool | None],
                 max_connections: int = 64, refuses: bool = True) -> None:
        self.name, self.handle, self.max_connections, self.refuses = name, handle, max_connections, refuses
        self.connections: dict[socket.socket, socket.socket] = {}  # accepted -> what it is now (a TLS wrapper)
        self._lock = threading.Lock()
        self._slot = threading.Condition(self._lock)  # notified when a connection ends
        self._sock: socket.socket | None = None
        self._stopped = False

    def start(self, sock: socket.socket) -> None:
        self._sock = sock
        threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True).start()

    def stop(self) -> None:
        """Stop accepting and wake every connection (their threads end on their next IO)."""
        self._stopped = True
        if self._sock is not None:
            shut(self._sock)
            self._sock.close()
        with self._lock:
            for conn in self.connections.values():
                shut(conn)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            with self._slot:
                while not self.refuses and len(self.connections) >= self.max_connections and not self._stopped:
                    self._slot.wait(1.0)
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                if self.refuses and len(self.connections) >= self.max_connections:
                    log.warning("%s %s: refused: %d connections already", self.name, peer, self.max_connections)
                    conn.close()
                    continue
                self.connections[conn] = conn
            threading.Thread(target=self._run, args=(conn, peer), name=f"{self.name}-{peer}", daemon=True).start()

    def replace(self, conn: socket.socket, wrapper: socket.socket) -> None:
        """``conn`` (as accepted) now lives on as ``wrapper`` (TLS detaches the accepted socket):
        stop() wakes the wrapper, and the wrapper is closed when the connection ends."""
        with self._lock:
            if conn in self.connections:  # not if stop() or the connection's end came first
                self.connections[conn] = wrapper

    def _run(self, conn: socket.socket, peer: object) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kept = False
        try:
            kept = bool(self.handle(conn, peer))
        finally:
            with self._lock:
                current = self.connections.pop(conn, conn)
                self._slot.notify()
            if not kept:
                current.close()
                conn.close()
