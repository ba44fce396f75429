"""The AIM handshake's MACs cover every field: a hello with any field changed on the way (an
operation, a generation) is refused, and so is an answer turned from an acceptance into a
refusal (a forged fence) or with any field changed; an untouched exchange is accepted."""

import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.aim import wire

TOKEN = "handshake-token-0123456789"
HELLO = {"op": "stream", "set_id": "a" * 32, "set_name": "db01", "generation": 3, "aim_port": 7411,
         "outstanding_markers": [1, 2]}
_change = st.sampled_from(sorted(HELLO)) | st.just("nonce")
_to = st.one_of(st.just("promote"), st.integers(0, 9), st.text(max_size=4), st.none())


def _server(far: socket.socket, out: list) -> None:
    try:
        hello, hs = wire.server_handshake(far, lambda h: TOKEN)
        out.append(hello)
        hs.accept(applied_seq=5)
    except (wire.WireError, OSError) as e:
        out.append(e)


def _mitm_hello(field: str, value: object) -> object:
    """A client's hello with ``field`` changed between the client and the server: the server's verdict."""
    near, far = socket.socketpair()
    out: list = []
    t = threading.Thread(target=_server, args=(far, out))
    t.start()
    challenge = near.recv(len(wire.GREETING) + 32)[len(wire.GREETING):]
    body = {**HELLO, "nonce": "11" * 32}
    msg = {**body, "mac": wire.mac(TOKEN, b"client", challenge, wire.canonical(body))}
    msg[field] = value
    wire.send_message(near, msg)
    t.join(5)
    near.close()
    far.close()
    return out[0]


@settings(max_examples=40, deadline=None)
@given(field=_change, value=_to)
def test_a_hello_changed_on_the_way_is_refused(field, value):
    if value == {**HELLO, "nonce": "11" * 32}[field]:
        return
    got = _mitm_hello(field, value)
    assert isinstance(got, wire.WireError) and "authentication failed" in str(got)


def test_an_untouched_hello_is_accepted():
    near, far = socket.socketpair()
    out: list = []
    t = threading.Thread(target=_server, args=(far, out))
    t.start()
    answer = wire.client_handshake(near, TOKEN, HELLO)
    t.join(5)
    assert answer["applied_seq"] == 5 and out[0]["op"] == "stream" and out[0]["generation"] == 3


def _fake_destination(far: socket.socket, answer_of) -> None:
    """A destination whose answer is rewritten on the way by ``answer_of(challenge, nonce)``."""
    challenge = b"c" * 32
    far.sendall(wire.GREETING + challenge)
    hello = wire.recv_message(far)
    wire.send_message(far, answer_of(challenge, bytes.fromhex(hello["nonce"])))


@pytest.mark.parametrize("tamper", ["accept-made-refusal", "field-changed"])
def test_an_answer_changed_on_the_way_is_not_trusted(tamper):
    def answer_of(challenge: bytes, nonce: bytes) -> dict:
        accepted = {"applied_seq": 5, "ok": True}
        good = wire.mac(TOKEN, b"accept", nonce, challenge, wire.canonical(accepted))
        if tamper == "accept-made-refusal":  # a genuine acceptance's proof on a forged fence
            return {"ok": False, "error": "fenced: promoted", "mac": good,
                    "fenced": {"generation": 9, "state": "promoted"}}
        return {**accepted, "applied_seq": 0, "mac": good}
    near, far = socket.socketpair()
    t = threading.Thread(target=_fake_destination, args=(far, answer_of))
    t.start()
    with pytest.raises(wire.WireError) as e:
        wire.client_handshake(near, TOKEN, HELLO)
    t.join(5)
    assert not isinstance(e.value, wire.Fenced)
