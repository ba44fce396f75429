"""An NBD server (fixed newstyle handshake, simple replies) over the node's exports.

Written from the protocol document (NetworkBlockDevice/nbd, doc/proto.md). Options: EXPORT_NAME,
ABORT, LIST, INFO, GO, and STARTTLS when TLS is configured (the policy: :mod:`.nbdtls`); anything
else is answered ``NBD_REP_ERR_UNSUP`` (so clients fall back from structured replies). Commands: READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES (and CACHE as a
no-op). Writes go through the volume write path; FLUSH and FUA make them durable before the reply.
A malformed frame closes that connection only.
"""

import errno
import logging
import socket
import ssl
import struct
import time

from ..errors import Conflict, EngineError, InvalidInput, NotFound
from ..net.listener import ThreadedListener
from ..net.recvbuf import recv_exact
from . import exports
from .nbdio import CMD_WRITE, MAX_REQUEST, ProtocolError, ReadArena, Request, Requests, send_all
from .nbdio import REQUEST_MAGIC  # noqa: F401 - one of the protocol's names, with the others here
from .nbdtls import NbdTls, TlsFailed

log = logging.getLogger("aimsnap.nbd")

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1 << 0, 1 << 1
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = (1 << 31) + 1, (1 << 31) + 2, (1 << 31) + 3
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN = (1 << 31) + 5, (1 << 31) + 6
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1 << 0, 1 << 1, 1 << 2, 1 << 3
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_CAN_MULTI_CONN = 1 << 5, 1 << 6, 1 << 8
CMD_READ, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES = 0, 2, 3, 4, 5, 6
CMD_FLAG_FUA = 1 << 0

MAX_OPTION_DATA = 64 * 1024
PREFERRED_BLOCK = 4096

_REPLY = struct.Struct(">IIQ")


def _transmission_flags(export: exports.Export) -> int:
    flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN  # one fdatasync covers all connections
    if export.read_only:
        flags |= TF_READ_ONLY
    else:
        flags |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
    return flags


class NbdServer:
    """One thread per connection, blocking sockets: the kernel copies payloads straight into the
    connection's receive buffer and ``pwrite`` takes them from there, and connections run in
    parallel while the GIL is released in those calls (the same shape as nbdkit's threads).
    Everything a client has queued is handled as one batch (see :class:`.nbdio.Requests`)."""

    def __init__(self, node, max_connections: int = 64, tls: NbdTls | None = None) -> None:
        self.node, self.tls = node, tls
        self.listener = ThreadedListener("nbd", self._serve, max_connections)
        self.start, self.stop = self.listener.start, self.listener.stop

    def _serve(self, conn: socket.socket, peer: object) -> None:
        try:
            export, conn = self._handshake(conn, time.monotonic() + NEGOTIATION_TIMEOUT)
            conn.settimeout(None)  # an open export may idle for hours (a mounted device)
            if export is not None:
                try:
                    self._transmission(export, conn)
                finally:
                    self.node.hosts.closed(export.name)
        except (ProtocolError, TlsFailed) as e:
            log.warning("nbd %s: closing connection: %s", peer, e)
        except TimeoutError:
            log.warning("nbd %s: closing connection: no export opened within %g s", peer, NEGOTIATION_TIMEOUT)
        except (ConnectionError, OSError):
            pass  # the client went away, or stop() closed the socket

    # -- handshake ---------------------------------------------------------------------------------
    def _handshake(self, conn: socket.socket, deadline: float) -> tuple[exports.Export | None, socket.socket]:
        """Option haggling until an export is open (or the client aborts), by ``deadline`` (a
        connection that opens nothing must not hold one of the listener's slots: 64 idle ones
        would lock every host out); the export and the socket to serve it on (a TLS wrapper of
        ``conn`` once STARTTLS succeeded)."""
        _until(conn, deadline)
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", recv_exact(conn, 4))
        if client_flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) or not client_flags & FLAG_FIXED_NEWSTYLE:
            raise ProtocolError(f"unsupported client flags {client_flags:#x}")
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            _until(conn, deadline)
            magic, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
            if magic != IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_DATA:
                raise ProtocolError(f"option data of {length} bytes is too long")
            data = recv_exact(conn, length)
            if opt == OPT_STARTTLS:
                conn = self._starttls(conn, data)
            elif self._tls_required(conn, opt):
                pass  # refused until TLS is up
            elif opt == OPT_EXPORT_NAME:
                export = self._resolve(conn, data.decode("utf-8", "surrogateescape"))  # a bad name: no export
                if export is None:
                    raise ProtocolError(f"no export {data[:100]!r}")
                return self._open(export, conn, struct.pack(">QH", export.size, _transmission_flags(export))
                                  + (b"" if no_zeroes else bytes(124))), conn
            elif opt == OPT_ABORT:
                _reply(conn, opt, REP_ACK)
                return None, conn
            elif opt == OPT_LIST:
                self._list(conn, data)
            elif opt in (OPT_INFO, OPT_GO):
                export = self._info(conn, opt, data)
                if export is None:
                    continue
                if opt == OPT_GO:
                    return self._open(export, conn, _option_reply(opt, REP_ACK)), conn
                _reply(conn, opt, REP_ACK)
            else:
                _reply(conn, opt, REP_ERR_UNSUP, b"option not supported")

    def _starttls(self, conn: socket.socket, data: bytes) -> socket.socket:
        """Answer STARTTLS; after an ACK, haggling goes on over TLS (a failed handshake closes
        the connection: the ACK is sent, there is no way back to plain text)."""
        if self.tls is None:
            _reply(conn, OPT_STARTTLS, REP_ERR_UNSUP, b"TLS is not configured on this server")
        elif isinstance(conn, ssl.SSLSocket):
            _reply(conn, OPT_STARTTLS, REP_ERR_INVALID, b"TLS is already started")
        elif data:
            _reply(conn, OPT_STARTTLS, REP_ERR_INVALID, b"STARTTLS takes no data")
        else:
            _reply(conn, OPT_STARTTLS, REP_ACK)
            raw, conn = conn, self.tls.start(conn)
            self.listener.replace(raw, conn)
        return conn

    def _tls_required(self, conn: socket.socket, opt: int) -> bool:
        """In ``require`` mode before TLS: refuse ``opt`` (True), or let it through (ABORT)."""
        if self.tls is None or not self.tls.required or isinstance(conn, ssl.SSLSocket) or opt == OPT_ABORT:
            return False
        if opt == OPT_EXPORT_NAME:  # it cannot be answered with an error
            raise ProtocolError("NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required")
        _reply(conn, opt, REP_ERR_TLS_REQD, b"TLS is required: send NBD_OPT_STARTTLS first")
        return True

    def _visible(self, conn: socket.socket, name: str) -> bool:
        return self.tls is None or self.tls.may_open(conn, name)

    def _resolve(self, conn: socket.socket, name: str) -> exports.Export | None:
        """The export ``name`` if it exists and this client may open it, else None (the same
        answer either way: existence is not revealed to a client the map refuses)."""
        try:
            return exports.resolve(self.node, name) if self._visible(conn, name) else None
        except NotFound:
            return None

    def _list(self, conn: socket.socket, data: bytes) -> None:
        if data:
            _reply(conn, OPT_LIST, REP_ERR_INVALID, b"LIST takes no data")
            return
        for name, description in exports.names(self.node):
            if not self._visible(conn, name):
                continue
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
        export = self._resolve(conn, name)
        if export is None:
            _reply(conn, opt, REP_ERR_UNKNOWN, f"no export {name!r}".encode())
            return None
        _reply(conn, opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.size, _transmission_flags(export)))
        if INFO_NAME in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">H", INFO_NAME) + name.encode())
        if INFO_DESCRIPTION in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + export.description.encode())
        if INFO_BLOCK_SIZE in requests:
            _reply(conn, opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
        return export  # the caller sends the final ACK

    def _open(self, export: exports.Export, conn: socket.socket, last_reply: bytes) -> exports.Export:
        """Count the host as having ``export`` open *before* the reply that lets it start: a
        restore asked for right after the client's handshake returned must see it."""
        self.node.hosts.opened(export.name)
        try:
            conn.sendall(last_reply)
        except BaseException:
            self.node.hosts.closed(export.name)
            raise
        return export

    # -- transmission --------------------------------------------------------------------------------
    def _transmission(self, export: exports.Export, conn: socket.socket) -> None:
        requests, arena = Requests(conn), ReadArena()
        while True:
            batch = requests.batch()
            arena.reset()  # the previous batch's replies are sent
            replies: list[bytes] = []
            i = 0
            while i < len(batch):
                req = batch[i]
                if req.cmd == CMD_DISC:
                    break
                if req.cmd == CMD_WRITE:  # a run of writes lands as one batch
                    j = i + 1
                    while j < len(batch) and batch[j].cmd == CMD_WRITE:
                        j += 1
                    for r, error in zip(batch[i:j], self._writes(export, batch[i:j])):
                        replies.append(_REPLY.pack(SIMPLE_REPLY_MAGIC, error, r.handle))
                    i = j
                    continue
                if req.cmd == CMD_READ and not arena.fits(req.length):  # send what the buffer holds first
                    send_all(conn, replies)
                    replies = []
                    arena.reset()
                error, data = self._command(export, req, arena)
                replies.append(_REPLY.pack(SIMPLE_REPLY_MAGIC, error, req.handle))
                if data:
                    replies.append(data)
                i += 1
            if replies:
                send_all(conn, replies)
            if i < len(batch):  # CMD_DISC
                return

    def _writes(self, export: exports.Export, reqs: list[Request]) -> list[int]:
        """Land a run of writes together; the error of each (a bad range fails alone)."""
        errors = [_range_error(export, r) or (errno.EPERM if export.read_only else 0) for r in reqs]
        good = [r for r, e in zip(reqs, errors) if not e]
        if good:
            fua = any(r.flags & CMD_FLAG_FUA for r in good)
            error, _ = _outcome(export, lambda: export.write_many([(r.offset, r.data) for r in good], fua=fua))
            errors = [e or error for e in errors]
        return errors

    def _command(self, export: exports.Export, req: Request, arena: ReadArena) -> tuple[int, bytes]:
        cmd, fua = req.cmd, bool(req.flags & CMD_FLAG_FUA)
        if cmd in (CMD_READ, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE) and _range_error(export, req):
            return errno.EINVAL, b""
        if cmd == CMD_READ:
            if req.length > MAX_REQUEST:
                return errno.EINVAL, b""
            view = arena.take(req.length) if export.read_into is not None else None
            if view is not None:
                return _outcome(export, lambda: export.read_into(req.offset, view) or view)
            return _outcome(export, lambda: export.read(req.offset, req.length))
        if cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
            if export.read_only:
                return errno.EPERM, b""
            return _outcome(export, lambda: export.write_zeroes(req.offset, req.length, fua=fua))
        if cmd == CMD_FLUSH:
            return _outcome(export, export.flush)
        return (0, b"") if cmd == CMD_CACHE else (errno.EINVAL, b"")


def _range_error(export: exports.Export, req: Request) -> int:
    return errno.EINVAL if req.offset + req.length > export.size else 0


def _outcome(export: exports.Export, call) -> tuple[int, bytes]:
    """Run one operation; its NBD error and the data it returned (for a read)."""
    try:
        return 0, call() or b""
    except Conflict:
        return errno.EPERM, b""
    except (InvalidInput, EngineError):
        return errno.EINVAL, b""
    except OSError as e:
        log.error("nbd %s: %s", export.name, e)
        return (errno.ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO), b""


NEGOTIATION_TIMEOUT = 60.0  # seconds from the connection to an open export


def _until(conn: socket.socket, deadline: float) -> None:
    """Let the next receives wait only until ``deadline`` (TimeoutError past it)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    conn.settimeout(left)


def _option_reply(opt: int, rtype: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)) + data


def _reply(conn: socket.socket, opt: int, rtype: int, data: bytes = b"") -> None:
    conn.sendall(_option_reply(opt, rtype, data))
