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
    if state == "hello":
        _exchange(receiver, None, garbage)
    else:
        _exchange(receiver, {"op": "stream", "set_id": set_id, "set_name": "fuzz"}, b"".join(stream) + garbage)
    b = receiver.targets.get(set_id)
    # whatever was applied came in sequence from where it stood: a write landed only if every
    # entry before it did (a gap, a bad checksum or an unknown type stops the stream first)
    assert b.applied_seq >= applied_before
    if b.applied_seq == applied_before and state == "hello":
        assert node.read("v-dr", 0, SIZE) == before


_value = (st.none() | st.booleans() | st.integers(-5, 2**40) | st.text(max_size=12)
          | st.lists(st.integers(0, 3), max_size=3) | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@FUZZ
@given(op=st.sampled_from(["promote", "failback", "stream", "release"]), known=st.booleans(),
       fields=st.dictionaries(st.sampled_from(["generation", "final_seq", "promoted_seq", "aim_port", "volume",
                                               "journal_limit", "group", "set_name", "outstanding_markers"]),
                              _value, max_size=8))
def test_role_change_requests_with_generated_fields(node, op, known, fields):
    """A promote, failback, stream or release request with any fields, for a set this node
    receives or one it does not: answered or refused, never an escaped exception or a hang, and a
    node that serves no AIM port of its own changes no role."""
    if "role-dr" not in node.volumes:
        node.create_volume("role-dr", SIZE, "4KiB")
    receiver = Receiver(node, TOKEN)
    set_id = "e" * 32
    if node.replication.targets.get(set_id) is None:
        receiver.targets.claim({"op": "claim", "set_id": set_id, "set_name": "role", "volume": "role-dr",
                                "size": SIZE})
    _exchange(receiver, {**fields, "op": op, "set_id": set_id if known else "0" * 32}, b"")
    target = node.replication.targets.get(set_id)
    if op != "release":
        assert target is not None and target.promoted is None and target.generation == 1
        assert node.volumes["role-dr"].replica_of == "role" and "role" not in node.replication.sets
    else:  # a release of generation >= 1 forgets the set (as its source deleting it would)
        if target is None:
            receiver.targets.claim({"op": "claim", "set_id": set_id, "set_name": "role", "volume": "role-dr",
                                    "size": SIZE})


def _exchange(receiver: Receiver, hello: dict | None, then: bytes) -> None:
    """One connection to the AIM port: the handshake with ``hello`` (None: ``then`` in its place),
    then ``then``; the port must answer or close, and nothing may escape or hang."""
    near, far = socket.socketpair()
    t, escaped = _run(receiver.serve, far)
    try:
        if hello is None:
            near.recv(len(wire.GREETING) + 32)
        else:
            wire.client_handshake(near, TOKEN, hello)
        near.sendall(then)
        near.shutdown(socket.SHUT_WR)
        _drain(near)
    except (OSError, wire.WireError):
        pass
    t.join(10)
    near.close()
    assert not t.is_alive(), "the AIM connection hung"
    assert escaped == [] and receiver.errors == 0
