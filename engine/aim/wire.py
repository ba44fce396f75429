"""The AIM connection: HMAC challenge-response handshake and frame IO on a socket.

The destination sends a random challenge; the source answers with its hello (the operation, the
set, its generation, a nonce of its own) and HMAC-SHA256(token, "client" | challenge | the whole
hello, canonical JSON); the destination proves it knows the token too with HMAC-SHA256(token,
"accept" or "refuse" | client-nonce | challenge | the whole answer). The token never crosses the
wire, and no field of either message can be changed on the way (an operation, a generation, a
fence).
"""

import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable

from . import frames
from ..errors import InvalidInput
from ..net.recvbuf import RecvBuffer, recv_exact

GREETING = b"AIMSNAP1"
MAX_MESSAGE = 64 * 1024


class WireError(Exception):
    """The peer broke the protocol or failed authentication."""


class Fenced(WireError):
    """The destination was promoted (failover or switchover): this source's stream is never
    applied again. ``info``: generation, promoted_at, reason (authenticated by the handshake)."""

    def __init__(self, message: str, info: dict) -> None:
        super().__init__(message)
        self.info = info


class DestinationError(Exception):
    """The destination stopped applying, and said why (an ERROR frame): out of space, an IO error,
    a read-only file system, its volume gone. Retried with backoff; the reason is ``last_error``."""

    def __init__(self, reason: str, errno_name: str | None = None) -> None:
        super().__init__(f"destination: {reason}")
        self.reason, self.errno_name = reason, errno_name


def mac(token: str, *parts: bytes) -> str:
    return hmac.new(token.encode(), b"|".join(parts), hashlib.sha256).hexdigest()


def send_message(sock: socket.socket, obj: dict) -> None:
    raw = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(raw)) + raw)


def recv_message(sock: socket.socket) -> dict:
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    if length > MAX_MESSAGE:
        raise WireError(f"handshake message of {length} bytes is too long")
    try:
        obj = json.loads(recv_exact(sock, length))
    except ValueError:
        raise WireError("handshake message is not JSON") from None
    if not isinstance(obj, dict):
        raise WireError("handshake message is not an object")
    return obj


def recv_frame(sock: socket.socket) -> frames.Frame:
    head = recv_exact(sock, frames.HEADER_SIZE)
    try:
        ftype, _seq, _off, _t, length, _crc = frames.parse_header(head)
        payload = recv_exact(sock, frames.payload_length(ftype, length))
        return frames.decode(head, payload)
    except frames.FrameError as e:
        raise WireError(str(e)) from None


class FrameReader:
    """Frames from a socket through one :class:`RecvBuffer`: many frames per ``recv``, parsed in
    place, and a way to tell idleness (no complete frame within a wait) from a stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.rb = RecvBuffer(sock, 64 << 10)  # grows with a busy stream

    def batch(self, wait: float | None = None) -> list[frames.Frame]:
        """Every complete frame received so far, at least one; [] if none came within ``wait``
        seconds. Their data payloads are valid until the next call."""
        rb = self.rb
        while True:
            out = []
            try:
                while True:
                    frame, after = frames.parse_at(rb.buf, rb.start, rb.end)
                    if frame is None:
                        break
                    out.append(frame)
                    rb.start = after
            except frames.FrameError as e:
                raise WireError(str(e)) from None
            if out:
                return out
            if not rb.fill(after, wait):  # ``after``: the bytes the next frame needs
                return []


def send_frame(sock: socket.socket, frame: frames.Frame) -> int:
    raw = frame.encode()
    sock.sendall(raw)
    return len(raw)


class Connection:
    """One authenticated AIM connection, as the sender and the applier use it: frames out, frames
    in, journal ranges shipped. Plain blocking calls on a socket (TLS or not), so that the same
    code runs over TCP, TLS or a ``socket.socketpair()`` in a test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader: FrameReader | None = None

    def send(self, frame: frames.Frame) -> int:
        return send_frame(self.sock, frame)

    def recv(self) -> frames.Frame:
        return recv_frame(self.sock)

    def batch(self, wait: float | None = None) -> list[frames.Frame]:
        """See :meth:`FrameReader.batch` (one receive buffer for the connection's life)."""
        if self._reader is None:
            self._reader = FrameReader(self.sock)
        return self._reader.batch(wait)

    def release(self) -> None:
        """Nothing is unread and nothing handed out is in use: the receive buffer may go."""
        if self._reader is not None:
            self._reader.rb.release()

    def send_pending(self, pending: deque) -> bool:
        """Send what ``pending`` holds, in order, as far as the socket takes it without waiting
        (the socket is non-blocking); True when all of it is sent. Items: bytes (a memoryview),
        or ``(file, pos, count)``, journal bytes sent straight from the page cache (``sendfile``),
        or through a buffer when TLS must encrypt them. A partly sent item stays, for what is left."""
        tls = isinstance(self.sock, ssl.SSLSocket)
        while pending:
            item = pending[0]
            if tls and isinstance(item, tuple):
                f, pos, count = item
                item = pending[0] = memoryview(os.pread(f.fileno(), count, pos))
            try:
                if isinstance(item, tuple):
                    f, pos, count = item
                    n = os.sendfile(self.sock.fileno(), f.fileno(), pos, count)
                    if n == 0:
                        raise ConnectionError("the destination closed the stream")
                    pending[0] = (f, pos + n, count - n)
                    done = n == count
                else:
                    n = self.sock.send(item)  # over TLS: all of it, or a want-write (the same buffer again)
                    pending[0] = item[n:]
                    done = n == len(item)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            if done:
                pending.popleft()
        return True

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def shutdown(self) -> None:
        """Wake whoever is blocked on the connection; the owner closes it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def client_handshake(sock: socket.socket, token: str, hello: dict) -> dict:
    """Authenticate to a destination; return its answer (which proves it knows the token too).
    A refusal that proves it too and says the set was promoted there raises :class:`Fenced`."""
    greeting = recv_exact(sock, len(GREETING) + 32)
    if not greeting.startswith(GREETING):
        raise WireError("the peer is not an aimsnap AIM port")
    challenge = greeting[len(GREETING):]
    nonce = os.urandom(32)
    body = {**hello, "nonce": nonce.hex()}
    send_message(sock, {**body, "mac": mac(token, b"client", challenge, canonical(body))})
    answer = recv_message(sock)
    label = b"accept" if answer.get("ok") is True else b"refuse"
    proven = hmac.compare_digest(str(answer.get("mac", "")), mac(token, label, nonce, challenge, canonical(
        {k: v for k, v in answer.items() if k != "mac"})))
    if not answer.get("ok"):
        if proven and isinstance(answer.get("fenced"), dict):
            raise Fenced(str(answer.get("error", "fenced")), answer["fenced"])
        raise WireError(str(answer.get("error", "refused by the destination")))
    if not proven:
        raise WireError("the destination did not prove it knows the token")
    return answer


def canonical(obj: dict) -> bytes:
    """The bytes a handshake message's MAC covers: all of it, in one spelling."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Handshake:
    """The destination's side of one authenticated handshake: accept, or refuse, proving the token.
    Each answer's MAC covers the whole answer, and accepting and refusing use different labels,
    so a refusal cannot be made of an acceptance, nor its reason changed (a forged fence)."""

    def __init__(self, sock: socket.socket, token: str, challenge: bytes, nonce: bytes) -> None:
        self.sock, self.token, self.challenge, self.nonce = sock, token, challenge, nonce
        self.answer: dict | None = None  # what was answered (the audit trail of role requests)

    def _send(self, label: bytes, answer: dict) -> None:
        self.answer = answer
        send_message(self.sock, {**answer, "mac": mac(self.token, label, self.nonce, self.challenge,
                                                      canonical(answer))})

    def accept(self, **answer: object) -> None:
        self._send(b"accept", {**answer, "ok": True})

    def refuse(self, error: str, **answer: object) -> None:
        """A refusal the source can trust (it carries the proof): e.g. fenced."""
        self._send(b"refuse", {**answer, "ok": False, "error": error})


def server_handshake(sock: socket.socket, token_for: Callable[[dict], str]) -> tuple[dict, Handshake]:
    """Challenge a source; return its hello (after checking the MAC, over the whole hello, with the
    token ``token_for(hello)`` names: the node's, or the set's own secret) and the handshake."""
    challenge = os.urandom(32)
    sock.sendall(GREETING + challenge)
    hello = recv_message(sock)
    try:
        nonce = bytes.fromhex(str(hello.get("nonce", "")))
    except ValueError:
        nonce = b""
    token = token_for(hello)
    expected = mac(token, b"client", challenge, canonical({k: v for k, v in hello.items() if k != "mac"}))
    if len(nonce) != 32 or not hmac.compare_digest(str(hello.get("mac", "")), expected):
        send_message(sock, {"ok": False, "error": "authentication failed"})
        raise WireError("authentication failed (wrong token?)")
    return hello, Handshake(sock, token, challenge, nonce)


TO_RE = re.compile(r"^(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d{1,5})/(?P<volume>[^/\s]+)$")


def parse_to(text: str) -> tuple[str, int, str]:
    m = TO_RE.match(text or "")
    if not m or int(m["port"]) > 65535:
        raise InvalidInput(f"invalid --to {text!r}: write HOST:AIMPORT/DESTVOLUME, e.g. 10.0.0.2:7411/db01-dr")
    return m["host"].strip("[]"), int(m["port"]), m["volume"]


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an AIM port), IPv6 hosts in brackets."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"invalid AIM address {text!r}: write HOST:AIMPORT, e.g. 10.0.0.1:7411")
    return host.strip("[]"), int(port)


Connector = Callable[..., socket.socket]  # (host, port, tls=...) -> a connected socket, like connect()


def connect(host: str, port: int, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError) as e:
            sock.close()
            raise WireError(f"TLS handshake failed: {e}") from None
    return sock
