"""A minimal NBD client for tests that must send what real clients never send (bad frames,
writes to read-only exports)."""

import socket
import struct

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x0003E889045565A9
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
OPT_GO = 7


class NbdClient:
    def __init__(self, address: str, export: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        magic, opt_magic, _flags = struct.unpack(">QQH", self._recv(18))
        assert magic == NBDMAGIC and opt_magic == IHAVEOPT
        self.sock.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        self.size = self.flags = None
        while True:
            magic, _opt, rtype, length = struct.unpack(">QIII", self._recv(20))
            assert magic == REPLY_MAGIC
            payload = self._recv(length)
            if rtype == 3 and struct.unpack_from(">H", payload)[0] == 0:
                _, self.size, self.flags = struct.unpack(">HQH", payload)
            elif rtype == 1:
                return
            elif rtype & (1 << 31):
                raise OSError(f"GO refused: {rtype:#x} {payload!r}")

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def request(self, cmd: int, offset: int, length: int, data: bytes = b"", flags: int = 0, handle: int = 1):
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + data)
        magic, error, got = struct.unpack(">IIQ", self._recv(16))
        assert magic == SIMPLE_REPLY_MAGIC and got == handle
        payload = self._recv(length) if cmd == 0 and error == 0 else b""
        return error, payload

    def read(self, offset: int, length: int):
        return self.request(0, offset, length)

    def write(self, offset: int, data: bytes, flags: int = 0):
        return self.request(1, offset, len(data), data, flags)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
