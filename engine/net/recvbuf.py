"""Receiving for the two stream protocols the node serves (NBD, AIM): one reusable buffer for the
data phase, where a ``recv`` brings as many messages as the peer has queued and they are parsed
in place (a batch of small messages costs one system call and no copies), and :func:`recv_exact`
for the handshakes."""

import socket


class RecvBuffer:
    """Bytes ``buf[start:end]`` received and not yet consumed.

    Views handed out into ``buf`` stay valid until the next :meth:`fill`, which may move unread
    bytes to the front (the buffer is never resized in place: a message longer than it gets a
    new, larger buffer, and views into the old one keep it alive)."""

    def __init__(self, sock: socket.socket, size: int = 1 << 20) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.start = self.end = 0

    def fill(self, need: int, timeout: float | None = None) -> bool:
        """Receive once, with room for ``need`` unread bytes; False if ``timeout`` seconds passed
        with nothing received (None: wait as the socket does)."""
        pending = self.end - self.start
        if pending == 0:
            self.start = self.end = 0
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
        except TimeoutError:
            return False
        finally:
            if timeout is not None:
                self.sock.settimeout(old)
        if n == 0:
            raise ConnectionError("connection closed by peer")
        self.end += n
        return True


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
