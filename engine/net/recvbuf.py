"""Receiving for the two stream protocols the node serves (NBD, AIM): one reusable buffer for the
data phase, where a ``recv`` brings as many messages as the peer has queued and they are parsed
in place (a batch of small messages costs one system call and no copies), and :func:`recv_exact`
for the handshakes.

A buffer is sized by activity: it starts small, doubles while a receive fills it (a busy stream),
up to ``MAX_SIZE``, and :meth:`RecvBuffer.release` gives it back when nothing is unread (a
connection parked idle holds no buffer: a thousand quiet AIM streams cost no memory)."""

import select
import socket
import ssl


class RecvBuffer:
    """Bytes ``buf[start:end]`` received and not yet consumed.

    Views handed out into ``buf`` stay valid until the next :meth:`fill`, which may move unread
    bytes to the front (the buffer is never resized in place: a message longer than it gets a
    new, larger buffer, and views into the old one keep it alive)."""

    MAX_SIZE = 1 << 20

    def __init__(self, sock: socket.socket, size: int = 1 << 20) -> None:
        self.sock = sock
        self.size = self._initial = size  # what the next allocation gets
        self.buf = bytearray(size)
        self.start = self.end = 0
        self._ready: select.poll | None = None  # over TLS: is more already here?
        if isinstance(sock, ssl.SSLSocket):
            self._ready = select.poll()
            self._ready.register(sock, select.POLLIN)

    def release(self) -> None:
        """Drop the buffer if nothing in it is unread (views handed out must be done with)."""
        if self.start == self.end and self.buf:
            self.buf = bytearray()
            self.start = self.end = 0
            self.size = self._initial  # an idle connection's next wake costs a small buffer again

    def fill(self, need: int, timeout: float | None = None) -> bool:
        """Receive once, with room for ``need`` unread bytes; False if ``timeout`` seconds passed
        with nothing received (None: wait as the socket does; 0: only what is here now)."""
        pending = self.end - self.start
        if pending == 0:
            self.start = self.end = 0
            if len(self.buf) < self.size:
                self.buf = bytearray(self.size)
        if need > len(self.buf):
            buf = bytearray(max(need, 2 * len(self.buf)))
            buf[:pending] = self.buf[self.start:self.end]
            self.buf = buf
            self.start, self.end = 0, pending
        elif self.start + need > len(self.buf) or self.end == len(self.buf):  # no room behind it
            self.buf[:pending] = self.buf[self.start:self.end]
            self.start, self.end = 0, pending
        old = self.sock.gettimeout() if timeout is not None else None
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            with memoryview(self.buf) as view:
                n = self.sock.recv_into(view[self.end:])
            if n == 0:
                raise ConnectionError("connection closed by peer")
            self.end += n
            if self._ready is not None:
                self._drain_tls()
            if self.end == len(self.buf) and self.size < self.MAX_SIZE:
                self.size *= 2  # the peer had more queued than fitted: a busy stream
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return self.end - self.start > pending
        finally:
            if timeout is not None:
                self.sock.settimeout(old)
        return True

    def _drain_tls(self) -> None:
        """Over TLS one ``recv`` returns one record (16 KiB at most, and a client such as libnbd
        sends each request as its own): take every record already here, decrypted or still on
        the socket, so that a batch holds what the peer has queued, as over plain TCP."""
        if not (self.sock.pending() or self._ready.poll(0)):  # type: ignore[union-attr]
            return
        old = self.sock.gettimeout()
        self.sock.settimeout(0)  # a partial record (or none: a KeyUpdate) must not hold the batch
        try:
            while self.end < len(self.buf):
                try:
                    with memoryview(self.buf) as view:
                        n = self.sock.recv_into(view[self.end:])
                except (ssl.SSLWantReadError, BlockingIOError):
                    return
                if n == 0:
                    return  # closed: the next fill says so, after this batch is served
                self.end += n
        finally:
            self.sock.settimeout(old)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes (a handshake field); ConnectionError if the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionError("connection closed by peer")
        view = view[got:]
    return bytes(buf)
