"""An NBD server (fixed newstyle handshake, simple replies) over the node's exports.

Written from the protocol document (NetworkBlockDevice/nbd, doc/proto.md). Options: EXPORT_NAME,
ABORT, LIST, INFO, GO; anything else is answered ``NBD_REP_ERR_UNSUP`` (so clients fall back
from structured replies). Commands: READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES (and CACHE as a
no-op). Writes go through the volume write path; FLUSH and FUA make them durable before the reply.
A malformed frame closes that connection only.
"""

import errno
import logging
import socket
import struct

from . import exports
from .errors import Conflict, EngineError, InvalidInput, NotFound
from .listener import ThreadedListener

log = logging.getLogger("aimsnap.nbd")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1 << 0, 1 << 1
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_UNKNOWN = (1 << 31) + 1, (1 << 31) + 2, (1 << 31) + 3, (1 << 31) + 6
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1 << 0, 1 << 1, 1 << 2, 1 << 3
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_CAN_MULTI_CONN = 1 << 5, 1 << 6, 1 << 8
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 5, 6
CMD_FLAG_FUA = 1 << 0

MAX_OPTION_DATA = 64 * 1024
MAX_REQUEST = 32 << 20
PREFERRED_BLOCK = 4096

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")


class ProtocolError(Exception):
    """The peer broke the protocol: close this connection."""


def _transmission_flags(export: exports.Export) -> int:
    flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN  # one fdatasync covers all connections
    if export.read_only:
        flags |= TF_READ_ONLY
    else:
        flags |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
    return flags


class NbdServer:
    """One thread per connection, blocking sockets: the kernel copies each payload straight into
    a per-connection buffer and ``pwrite`` takes it from there, and connections run in parallel
    while the GIL is released in those calls (the same shape as nbdkit's threads)."""

    def __init__(self, node, max_connections: int = 64) -> None:
        self.node = node
        self.listener = ThreadedListener("nbd", self._serve, max_connections)
        self.start, self.stop = self.listener.start, self.listener.stop

    def _serve(self, conn: socket.socket, peer: object) -> None:
        conn.settimeout(None)
        try:
            export = self._handshake(conn)
            if export is not None:
                self._transmission(export, conn)
        except ProtocolError as e:
            log.warning("nbd %s: closing connection: %s", peer, e)
        except (ConnectionError, OSError):
            pass  # the client went away, or stop() closed the socket

    # -- handshake ---------------------------------------------------------------------------------
    def _handshake(self, conn: socket.socket) -> exports.Export | None:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv_exact(conn, 4))
        if client_flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) or not client_flags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError(f"unsupported client flags {client_flags:#x}")
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, opt, length = struct.unpack(">QII", _recv_exact(conn, 16))
            if magic != IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_DATA:
                raise ProtocolError(f"option data of {length} bytes is too long")
            data = _recv_exact(conn, length)
            if opt == OPT_EXPORT_NAME:
                try:
                    export = exports.resolve(self.node, data.decode())
                except (NotFound, UnicodeDecodeError):
                    raise ProtocolError(f"no export {data[:100]!r}") from None
                conn.sendall(struct.pack(">QH", export.size, _transmission_flags(export))
                             + (b"" if no_zeroes else bytes(124)))
                return export
            if opt == OPT_ABORT:
                _reply(conn, opt, REP_ACK)
                return None
            if opt == OPT_LIST:
                self._list(conn, data)
            elif opt in (OPT_INFO, OPT_GO):
                export = self._info(conn, opt, data)
                if export is not None and opt == OPT_GO:
                    return export
            else:
                _reply(conn, opt, REP_ERR_UNSUP, b"option not supported")

    def _list(self, conn: socket.socket, data: bytes) -> None:
        if data:
            _reply(conn, OPT_LIST, REP_ERR_INVALID, b"LIST takes no data")
            return
        for name, description in exports.names(self.node):
            raw = name.encode()
            _reply(conn, OPT_LIST, REP_SERVER, struct.pack(">I", len(raw)) + raw + description.encode())
        _reply(conn, OPT_LIST, REP_ACK)

    def _info(self, conn: socket.socket, opt: int, data: bytes) -> exports.Export | None:
        try:
            (name_len,) = struct.unpack_from(">I", data)
            name = data[4:4 + name_len].decode()
            (nreq,) = struct.unpack_from(">H", data, 4 + name_len)
            requests = struct.unpack_from(f">{nreq}H", data, 6 + name_len)
            if len(data) != 6 + name_len + 2 * nreq:
                raise ValueError
        except (struct.error, UnicodeDecodeError, ValueError):
            _reply(conn, opt, REP_ERR_INVALID, b"malformed INFO/GO request")
            return None
        try:
            export = exports.resolve(self.node, name)
        except NotFound as e:
            _reply(conn, opt, REP_ERR_UNKNOWN, str(e).encode())
            return None
        _reply(conn, opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.size, _transmission_flags(export)))
        if INFO_NAME in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">H", INFO_NAME) + name.encode())
        if INFO_DESCRIPTION in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + export.description.encode())
        if INFO_BLOCK_SIZE in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
        _reply(conn, opt, REP_ACK)
        return export

    # -- transmission --------------------------------------------------------------------------------
    def _transmission(self, export: exports.Export, conn: socket.socket) -> None:
        header = bytearray(_REQUEST.size)
        payload = bytearray(0)
        while True:
            _recv_into_exact(conn, memoryview(header))
            magic, flags, cmd, handle, offset, length = _REQUEST.unpack(header)
            if magic != REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            data = memoryview(b"")
            if cmd == CMD_WRITE:
                if length > MAX_REQUEST:
                    raise ProtocolError(f"write of {length} bytes exceeds the {MAX_REQUEST} byte maximum")
                if len(payload) < length:
                    payload = bytearray(length)
                data = memoryview(payload)[:length]
                _recv_into_exact(conn, data)
            if cmd == CMD_DISC:
                return
            error, reply = self._command(export, cmd, flags, offset, length, data)
            conn.sendall(_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle))
            if reply:
                conn.sendall(reply)

    def _command(self, export: exports.Export, cmd: int, flags: int, offset: int, length: int,
                 data: memoryview) -> tuple[int, bytes]:
        fua = bool(flags & CMD_FLAG_FUA)
        try:
            if cmd in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE):
                if offset + length > export.size:
                    return errno.EINVAL, b""
            if cmd == CMD_READ:
                if length > MAX_REQUEST:
                    return errno.EINVAL, b""
                return 0, export.read(offset, length)
            if cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES) and export.read_only:
                return errno.EPERM, b""
            if cmd == CMD_WRITE:
                export.write(offset, data, fua=fua)
            elif cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
                export.write_zeroes(offset, length, fua=fua)
            elif cmd == CMD_FLUSH:
                export.flush()
            elif cmd != CMD_CACHE:
                return errno.EINVAL, b""
            return 0, b""
        except Conflict:
            return errno.EPERM, b""
        except (InvalidInput, EngineError):
            return errno.EINVAL, b""
        except OSError as e:
            log.error("nbd %s: %s", export.name, e)
            return (errno.ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO), b""


def _reply(conn: socket.socket, opt: int, rtype: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into_exact(conn, memoryview(buf))
    return bytes(buf)


def _recv_into_exact(conn: socket.socket, view: memoryview) -> None:
    while view:
        n = conn.recv_into(view)
        if n == 0:
            raise ConnectionError("the client closed the connection")
        view = view[n:]
