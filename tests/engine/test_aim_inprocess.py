"""The sender and the applier in one process: two node roots, the destination's AIM port handler
run on one end of a ``socket.socketpair()`` for every connection the source opens, an injected
delay for the sender's supervisor. Beside the multi-process tests in tests/e2e."""

import random
import threading
import time

import pytest

from engine import Node
from engine.aim.receiver import Receiver
from engine.errors import NotFound
from engine.aim.supervisor import Backoff, Supervisor
from engine.net.reactor import Reactor

from ..aimlink import Link, Recorder

TOKEN = "in-process-token-0123456789"
SIZE = 1 << 20


@pytest.fixture
def sites(tmp_path):
    dst = Node(str(tmp_path / "dst"))
    dst.create_volume("v-dr", SIZE, "4KiB")
    dst.create_snapshot("v-dr-pit", "v-dr", "differential")
    receiver = Receiver(dst, TOKEN)
    link = Link(receiver)
    sleep = Recorder()
    src = Node(str(tmp_path / "src"), connect=link.connect, delay=sleep)
    src.create_volume("v", SIZE, "4KiB")
    src.replication.start()
    yield src, dst, link, sleep
    src.close()
    receiver.stop()
    for t in link.threads:
        t.join(5)
    dst.close()


def _wait(cond, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def _caught_up(src: Node, name: str) -> dict:
    def done():
        s = src.replication.info(name)
        return s if s["state"] == "replicating" and s["acked_seq"] == s["last_seq"] else None
    return _wait(done, what=f"{name} to catch up")


def _marker(src: Node, label: str) -> dict:
    m = src.replication.issue_marker("v-aim", "v-dr-pit", label)
    m = src.replication.wait(str(m["id"]), 20)
    assert m["state"] == "applied", m
    return m


def test_writes_and_markers_cross_a_socketpair_in_order(sites):
    src, dst, link, _ = sites
    src.write("v", 0, b"before the set")
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")  # the initial sync copied the block written before
    rng = random.Random(7)
    for i in range(12):
        for _ in range(rng.randrange(1, 20)):
            src.write("v", rng.randrange(SIZE // 4096) * 4096, rng.randbytes(rng.choice((512, 4096, 9000))))
        content = src.read("v", 0, SIZE)
        m = _marker(src, f"r{i}")
        assert dst.read_snapshot("v-dr-pit", m["point"], 0, SIZE) == content, f"point r{i}"
    _caught_up(src, "v-aim")
    assert dst.read("v-dr", 0, SIZE) == src.read("v", 0, SIZE)
    assert len(link.opened) == 2  # the claim, then one stream for the whole test


def test_a_cut_link_is_reported_and_the_sender_reconnects_by_itself(sites):
    src, dst, link, sleep = sites
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")
    for round_ in range(5):
        src.write("v", round_ * 8192, bytes([round_ + 1]) * 8192)
        link.cut()
        src.write("v", round_ * 8192 + 4096, b"after the cut")
        _caught_up(src, "v-aim")
    status = src.replication.info("v-aim")
    assert status["errors"] >= 5 and status["last_error"] is None  # cleared by the progress after it
    assert all(w < 0.2 for w in sleep.waits)  # each reconnect after a healthy session waits the least
    m = _marker(src, "after-cuts")
    assert dst.read_snapshot("v-dr-pit", m["point"], 0, SIZE) == src.read("v", 0, SIZE)


def test_any_failure_is_reported_and_retried_with_backoff(sites):
    src, dst, link, sleep = sites
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")
    link.refuse = [ConnectionRefusedError(111, "Connection refused") for _ in range(11)]
    link.refuse.insert(4, RuntimeError("a bug nobody foresaw"))  # not a network error: still retried
    link.refuse.append(KeyError("dest_port"))
    n = len(link.refuse)
    link.cut()
    src.write("v", 0, b"written while the destination is unreachable")
    _caught_up(src, "v-aim")
    waits = sleep.waits[-(n + 1):]  # the cut session, then every refused connect
    for i, w in enumerate(waits):  # doubling from 100 ms with up to +50 % jitter, at most 30 s
        assert min(30.0, 0.1 * 2 ** i) <= w <= min(30.0, 0.15 * 2 ** i), (i, waits)
    assert waits[-1] == 30.0
    status = src.replication.info("v-aim")
    assert status["errors"] >= n + 1 and status["last_error"] is None
    assert dst.read("v-dr", 0, 64).startswith(b"written while the destination is unreachable")


def test_a_fault_right_after_the_handshake_backs_off_too(sites, monkeypatch):
    """The source's own storage failing as each session starts (seen in the power-loss campaign:
    a bad descriptor at every resync) must not retry ten times a second forever: a handshake is
    not progress, so the waits double, and ``last_error`` keeps saying why."""
    src, dst, link, sleep = sites
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")
    sender = src.replication.aim_set("v-aim").sender
    real, faults = sender.begin, [OSError(9, "Bad file descriptor") for _ in range(6)]

    def failing(*a, **kw):
        if faults:
            raise faults.pop(0)
        return real(*a, **kw)
    monkeypatch.setattr(sender, "begin", failing)
    before = len(sleep.waits)
    link.cut()
    status = _wait(lambda: (s := src.replication.info("v-aim"))["errors"] >= 6 and s, what="failures")
    assert "Bad file descriptor" in status["last_error"]
    src.write("v", 0, b"after the faults")
    _caught_up(src, "v-aim")
    waits = sleep.waits[before:before + 7]  # the cut session, then each failed one
    for i, w in enumerate(waits):
        assert min(30.0, 0.1 * 2 ** i) <= w <= min(30.0, 0.15 * 2 ** i), (i, waits)


def test_status_shows_the_reason_while_it_fails(sites):
    src, dst, link, sleep = sites
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")
    gate = threading.Event()
    real = link.connect

    def refusing(*a, **kw):
        if not gate.is_set():
            raise ConnectionRefusedError(111, "Connection refused")
        return real(*a, **kw)

    src.replication.aim_set("v-aim").connector = refusing
    link.cut()
    status = _wait(lambda: (s := src.replication.info("v-aim"))["errors"] >= 3 and s, what="failures")
    assert status["state"] == "disconnected" and "Connection refused" in status["last_error"]
    gate.set()
    _caught_up(src, "v-aim")


def test_backoff_doubles_with_jitter_up_to_its_cap_and_starts_over():
    b = Backoff(rng=random.Random(1))
    waits = [b.next() for _ in range(14)]
    assert 0.1 <= waits[0] <= 0.15 and waits[-1] == 30.0 and max(waits) == 30.0
    assert all(lo <= hi * 1.5 for lo, hi in zip(waits, waits[1:]))
    b.reset()
    assert b.next() <= 0.15


def test_a_supervisor_never_dies_and_stops_when_told():
    calls, waits = [], []
    done = threading.Event()

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("division by zero")
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        if len(calls) == 3:
            return 0.5  # ran well: again after this wait (no backoff)
        done.set()
        return 3600.0

    def delay(seconds):
        waits.append(seconds)
        return 0.001

    reactor = Reactor("test")
    sup = Supervisor("test", step, reactor, delay=delay)
    try:
        sup.start()
        assert done.wait(10)
        assert len(calls) == 4 and sup.errors == 2
        assert waits[:2] == sorted(waits[:2]) and waits[0] < 0.2 and waits[2] == 0.5  # backoff, then the step's own
        assert sup.last_error == "[Errno 5] Input/output error"
        sup.stop()
        sup.wake()  # stopped: no attempt is made any more
        time.sleep(0.05)
        assert len(calls) == 4
        sup.healthy()
        assert sup.last_error is None and sup.backoff.failures == 0
    finally:
        reactor.stop()

@pytest.mark.parametrize("ref", ["0", "-1", "9223372036854775807", "9223372036854775808", "1" * 40, "g-none"])
def test_a_marker_ref_that_names_nothing_is_not_found(sites, ref):
    """Seen in CI: 2**63 reached SQLite and raised OverflowError, an HTTP 500, not a 404."""
    src = sites[0]
    with pytest.raises(NotFound):
        src.replication.show(ref)
