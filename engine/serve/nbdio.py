"""The NBD transmission phase's byte moving: requests received in batches and parsed in place
(:class:`Requests`), a batch's reads served from one reusable buffer (:class:`ReadArena`), and
the replies sent with gathering writes, or joined into few TLS records (:func:`send_all`)."""

import socket
import ssl
import struct
from typing import NamedTuple

from ..net.recvbuf import RecvBuffer

REQUEST_MAGIC = 0x25609513
CMD_WRITE = 1
MAX_REQUEST = 32 << 20
IOV_MAX = 1024
TLS_SEND_CHUNK = 256 << 10  # replies joined up to this size per TLS write (TLS has no gathering write)
TLS_RECORD = 16 << 10  # the largest TLS record's payload
READ_ARENA = 4 << 20  # per connection: the reads of one batch up to this are served from one buffer
_REQUEST = struct.Struct(">IHHQQI")


class ProtocolError(Exception):
    """The peer broke the protocol: close this connection."""


class Request(NamedTuple):
    cmd: int
    flags: int
    handle: int
    offset: int
    length: int
    data: memoryview  # a write's payload, valid until the next batch


class ReadArena:
    """One buffer a connection's batch of reads lands in and is sent from, reused batch after
    batch: a fresh ``bytes`` per large read cost a page fault per 4 KiB (the allocator hands the
    memory back between reads; measured: a fifth of the node's time under nbdcopy over TLS).
    Allocated on the first read and touched only as far as batches reach; a batch reading more
    than :data:`READ_ARENA` sends the replies so far and starts the buffer again (one read larger
    than the buffer is allocated, as before)."""

    def __init__(self) -> None:
        self.buf: bytearray | None = None
        self.used = 0

    def reset(self) -> None:
        self.used = 0

    def fits(self, n: int) -> bool:
        """``n`` more bytes fit, or would not fit even in an empty buffer."""
        return self.used + n <= READ_ARENA or n > READ_ARENA

    def take(self, n: int) -> memoryview | None:
        if self.used + n > READ_ARENA:
            return None
        if self.buf is None:
            self.buf = bytearray(READ_ARENA)
        view = memoryview(self.buf)[self.used:self.used + n]
        self.used += n
        return view


class Requests:
    """Requests as they arrive: one ``recv`` brings everything the client has queued (fio at
    iodepth 16 queues 16), and the server handles it as one batch: consecutive writes land
    together (one journal append for an AIM source) and the replies go back in one ``send``."""

    def __init__(self, conn: socket.socket) -> None:
        self.rb = RecvBuffer(conn)

    def batch(self) -> list[Request]:
        while True:
            batch, need = self._parse()
            if batch:
                return batch
            self.rb.fill(need)

    def _parse(self) -> tuple[list[Request], int]:
        """The complete requests received, and the bytes the next one needs."""
        rb, out = self.rb, []
        buf, pos, end = rb.buf, rb.start, rb.end
        view = memoryview(buf)
        need = _REQUEST.size
        while end - pos >= _REQUEST.size:
            magic, flags, cmd, handle, offset, length = _REQUEST.unpack_from(buf, pos)
            if magic != REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            if cmd == CMD_WRITE:
                if length > MAX_REQUEST:
                    raise ProtocolError(f"write of {length} bytes exceeds the {MAX_REQUEST} byte maximum")
                need += length
            if end - pos < need:
                break
            out.append(Request(cmd, flags, handle, offset, length, view[pos + _REQUEST.size:pos + need]))
            pos += need
            need = _REQUEST.size
        rb.start = pos
        return out, need


def send_all(conn: socket.socket, parts: list[bytes]) -> None:
    """Send a batch's replies with gathering writes: read data is not copied to be joined."""
    if isinstance(conn, ssl.SSLSocket):
        _send_all_tls(conn, parts)
        return
    for i in range(0, len(parts), IOV_MAX):
        views = [memoryview(p) for p in parts[i:i + IOV_MAX]]
        while views:
            sent = conn.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views and sent:
                views[0] = views[0][sent:]


def _send_all_tls(conn: ssl.SSLSocket, parts: list[bytes]) -> None:
    """A TLS socket has no ``sendmsg``: join small replies into writes of up to about
    :data:`TLS_SEND_CHUNK` (a batch of 16-byte headers goes in a few TLS records, not one each),
    but copy at most one record's worth of a large read's data (the rest is encrypted from the
    read buffer itself: the join was a second copy of every byte read)."""
    pending = bytearray()
    for part in parts:
        if len(part) < TLS_RECORD:
            pending += part
            if len(pending) >= TLS_SEND_CHUNK:
                conn.sendall(pending)
                pending.clear()
            continue
        head = max(0, TLS_RECORD - len(pending))  # the queued headers and the first record of data
        pending += memoryview(part)[:head]
        conn.sendall(pending)
        pending.clear()
        conn.sendall(memoryview(part)[head:])
    if pending:
        conn.sendall(pending)
