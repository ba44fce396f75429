"""A small blocking NBD client (fixed newstyle, ``NBD_OPT_GO``, simple replies): what the demo's
workload writes through, and what tests use to send what real clients never send (bad frames,
writes to read-only exports). Real clients (nbdcopy, qemu) are tested against the server too."""

import socket
import ssl
import struct

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x0003E889045565A9
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
OPT_STARTTLS, OPT_GO, REP_ACK, REP_INFO, INFO_EXPORT = 5, 7, 1, 3, 0
CMD_READ, CMD_WRITE, CMD_FLUSH = 0, 1, 3
FLAG_FUA = 1


class NbdError(OSError):
    """The server broke the protocol or refused a request."""


class NbdClient:
    def __init__(self, address: str, export: str, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        """Connect and open ``export``; with ``tls``, start TLS first (``NBD_OPT_STARTTLS``)."""
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        magic, opt_magic, _flags = struct.unpack(">QQH", self._recv(18))
        if (magic, opt_magic) != (NBDMAGIC, IHAVEOPT):
            raise NbdError(f"{address} is not a newstyle NBD server")
        self.sock.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        if tls is not None:
            self.option(OPT_STARTTLS)
            rtype, payload = self.option_reply()
            if rtype != REP_ACK:
                raise NbdError(f"{address} refused STARTTLS: {rtype:#x} {payload.decode(errors='replace')}")
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        name = export.encode()
        self.option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        self.size = self.flags = None
        while True:
            rtype, payload = self.option_reply()
            if rtype == REP_INFO and struct.unpack_from(">H", payload)[0] == INFO_EXPORT:
                _, self.size, self.flags = struct.unpack(">HQH", payload)
            elif rtype == REP_ACK:
                return
            elif rtype & (1 << 31):
                raise NbdError(f"export {export!r} refused: {rtype:#x} {payload.decode(errors='replace')}")

    def option(self, opt: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def option_reply(self) -> tuple[int, bytes]:
        """One reply to an option: (reply type, data)."""
        magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
        if magic != REPLY_MAGIC:
            raise NbdError(f"bad option reply magic {magic:#x}")
        return rtype, self._recv(length)

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the NBD server closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, cmd: int, offset: int, length: int, data: bytes = b"", flags: int = 0,
                handle: int = 1) -> tuple[int, bytes]:
        """Send one request and wait for its reply: (errno, payload)."""
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + data)
        magic, error, got = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or got != handle:
            raise NbdError(f"bad reply (magic {magic:#x}, handle {got})")
        payload = self._recv(length) if cmd == CMD_READ and error == 0 else b""
        return error, payload

    def pipeline(self, requests: list[tuple[int, int, int, bytes, int]]) -> list[tuple[int, bytes]]:
        """Send every (cmd, offset, length, data, flags) request before reading any reply, as
        clients with a queue depth do; the replies, matched by handle, in request order."""
        self.sock.sendall(b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + data
                                   for handle, (cmd, offset, length, data, flags) in enumerate(requests)))
        replies: dict[int, tuple[int, bytes]] = {}
        for _ in requests:
            magic, error, handle = struct.unpack(">IIQ", self._recv(16))
            if magic != SIMPLE_REPLY_MAGIC or handle >= len(requests) or handle in replies:
                raise NbdError(f"bad reply (magic {magic:#x}, handle {handle})")
            cmd, _offset, length = requests[handle][:3]
            replies[handle] = (error, self._recv(length) if cmd == CMD_READ and error == 0 else b"")
        return [replies[h] for h in range(len(requests))]

    def read(self, offset: int, length: int) -> tuple[int, bytes]:
        return self.request(CMD_READ, offset, length)

    def write(self, offset: int, data: bytes, flags: int = 0) -> tuple[int, bytes]:
        return self.request(CMD_WRITE, offset, len(data), data, flags)

    def flush(self) -> tuple[int, bytes]:
        return self.request(CMD_FLUSH, 0, 0)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
