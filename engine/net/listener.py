"""Accept connections on a listening socket, one daemon thread each (the NBD and AIM ports)."""

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
    def __init__(self, name: str, handle: Callable[[socket.socket, object], None], max_connections: int = 64) -> None:
        self.name, self.handle, self.max_connections = name, handle, max_connections
        self.connections: dict[socket.socket, socket.socket] = {}  # accepted -> what it is now (a TLS wrapper)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def start(self, sock: socket.socket) -> None:
        self._sock = sock
        threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True).start()

    def stop(self) -> None:
        """Stop accepting and wake every connection (their threads end on their next IO)."""
        if self._sock is not None:
            shut(self._sock)
            self._sock.close()
        with self._lock:
            for conn in self.connections.values():
                shut(conn)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                if len(self.connections) >= self.max_connections:
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
        try:
            self.handle(conn, peer)
        finally:
            with self._lock:
                current = self.connections.pop(conn, conn)
            current.close()
            conn.close()
