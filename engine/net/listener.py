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
        self.connections: set[socket.socket] = set()
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
            for conn in self.connections:
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
                self.connections.add(conn)
            threading.Thread(target=self._run, args=(conn, peer), name=f"{self.name}-{peer}", daemon=True).start()

    def _run(self, conn: socket.socket, peer: object) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.handle(conn, peer)
        finally:
            with self._lock:
                self.connections.discard(conn)
            conn.close()
