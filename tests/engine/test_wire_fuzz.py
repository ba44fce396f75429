"""Random bytes and frames at every state of the NBD and AIM handshakes, against the real server
code on one end of a ``socketpair()``: the connection is closed or answered, never an escaped
exception or a hang, nothing is applied out of order, and the node serves a good client after."""

import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Node
from engine.aim import frames, wire
from engine.aim.receiver import Receiver
from engine.client.nbd import NbdClient
from engine.serve import nbd

TOKEN = "fuzz-token-0123456789abcdef"
SIZE = 1 << 20
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                deadline=None)


def _run(target, conn: socket.socket) -> tuple[threading.Thread, list[BaseException]]:
    """Serve ``conn`` on a thread, and close it when done (as the listener does)."""
    escaped: list[BaseException] = []

    def run() -> None:
        try:
            target(conn, "fuzz")
        except BaseException as e:  # noqa: BLE001 - what the test looks for
            escaped.append(e)
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, escaped


def _drain(sock: socket.socket) -> None:
    sock.settimeout(2)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(str(tmp_path_factory.mktemp("fuzz") / "n"))
    n.create_volume("v", SIZE, "4KiB")
    n.create_volume("v-dr", SIZE, "4KiB")
    n.create_snapshot("v-dr-pit", "v-dr", "differential")
    yield n
    n.close()


# -- NBD ------------------------------------------------------------------------------------------------
_FLAGS = struct.pack(">I", nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES)


def _go(name: bytes = b"v") -> bytes:
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    return struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, len(data)) + data


_option = st.builds(lambda opt, data: struct.pack(">QII", nbd.IHAVEOPT, opt, len(data)) + data,
                    st.integers(0, 12) | st.integers(0, 2**32 - 1), st.binary(max_size=64))
_request = st.builds(lambda flags, cmd, handle, off, length, tail: struct.pack(
    ">IHHQQI", nbd.REQUEST_MAGIC, flags, cmd, handle, off, length) + tail,
    st.integers(0, 0xFFFF), st.integers(0, 10), st.integers(0, 2**64 - 1),
    st.integers(0, SIZE + 8192) | st.integers(0, 2**64 - 1), st.integers(0, 70000) | st.integers(0, 2**32 - 1),
    st.binary(max_size=256))


@FUZZ
@given(state=st.sampled_from(["greeting", "options", "transmission"]), garbage=st.binary(max_size=300),
       options=st.lists(_option, max_size=4), requests=st.lists(_request, max_size=6))
def test_nbd_garbage_at_every_state(node, state, garbage, options, requests):
    server = nbd.NbdServer(node)
    near, far = socket.socketpair()
    t, escaped = _run(server._serve, far)
    try:
        payload = garbage
        if state != "greeting":
            payload = _FLAGS + b"".join(options) + (garbage if state == "options" else _go() + b"".join(requests))
        near.sendall(payload)
        near.shutdown(socket.SHUT_WR)
        _drain(near)
    except OSError:
        pass
    t.join(10)
    near.close()
    assert not t.is_alive(), "the NBD connection hung"
    assert escaped == []


def test_nbd_serves_a_good_client_after_the_fuzz(node, tmp_path):
    server = nbd.NbdServer(node)
    listener = socket.create_server(("127.0.0.1", 0))
    server.start(listener)
    try:
        c = NbdClient(f"127.0.0.1:{listener.getsockname()[1]}", "v")
        c.write(4096, b"still serving")
        assert c.read(4096, 13) == (0, b"still serving")
        c.close()
    finally:
        server.stop()


# -- AIM ------------------------------------------------------------------------------------------------
_frame = st.builds(lambda t, seq, off, payload, crc_ok: _encode(t, seq, off, payload, crc_ok),
                   st.sampled_from(sorted(frames.NAMES)) | st.integers(0, 255), st.integers(0, 40),
                   st.integers(0, SIZE) | st.integers(0, 2**64 - 1), st.binary(max_size=600), st.booleans())


def _encode(ftype: int, seq: int, off: int, payload: bytes, crc_ok: bool) -> bytes:
    if ftype not in frames.NAMES:
        return struct.pack(">IBBHQQQII", frames.MAGIC, ftype, 0, 0, seq, off, 0, len(payload), 0) + payload
    raw = frames.Frame(ftype, seq, off, 0, payload, len(payload)).encode()
    if not crc_ok and raw:
        raw = raw[:-1] + bytes([raw[-1] ^ 1]) if payload else raw[:40] + b"\0\0\0\1"
    return raw


@FUZZ
@given(state=st.sampled_from(["hello", "stream"]), garbage=st.binary(max_size=400),
       stream=st.lists(_frame, max_size=8))
def test_aim_garbage_at_every_state(node, state, garbage, stream):
    receiver = Receiver(node, TOKEN)
    set_id = "f" * 32
    receiver.targets.claim({"op": "claim", "set_id": set_id, "set_name": "fuzz", "volume": "v-dr", "size": SIZE})
    before = node.read("v-dr", 0, SIZE)
    applied_before = receiver.targets.get(set_id).applied_seq
    near, far = socket.socketpair()
    t, escaped = _run(receiver.serve, far)
    try:
        if state == "hello":
            near.recv(len(wire.GREETING) + 32)
            near.sendall(garbage)
        else:
            wire.client_handshake(near, TOKEN, {"op": "stream", "set_id": set_id, "set_name": "fuzz"})
            near.sendall(b"".join(stream) + garbage)
        near.shutdown(socket.SHUT_WR)
        _drain(near)
    except (OSError, wire.WireError):
        pass
    t.join(10)
    near.close()
    assert not t.is_alive(), "the AIM connection hung"
    assert escaped == [] and receiver.errors == 0
    b = receiver.targets.get(set_id)
    # whatever was applied came in sequence from where it stood: a write landed only if every
    # entry before it did (a gap, a bad checksum or an unknown type stops the stream first)
    assert b.applied_seq >= applied_before
    if b.applied_seq == applied_before and state == "hello":
        assert node.read("v-dr", 0, SIZE) == before
