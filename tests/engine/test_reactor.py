"""The reactor: parked sockets wake once on bytes or on their timeout, timers run unless
cancelled, a task never runs on two workers at once and never loses a wake, and the threads it
uses stay at its bound however many sockets wait."""

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.net.reactor import Reactor, Task


@pytest.fixture
def reactor():
    r = Reactor("test", workers=4, blocking_workers=2)
    yield r
    r.stop()


def test_a_parked_socket_wakes_on_bytes_and_not_on_its_timeout(reactor):
    a, b = socket.socketpair()
    woke = []
    done = threading.Event()
    reactor.park(a, lambda: (woke.append(time.monotonic()), done.set()), timeout=30)
    t0 = time.monotonic()
    b.send(b"x")
    assert done.wait(5) and woke[0] - t0 < 5
    time.sleep(0.05)
    assert len(woke) == 1  # once: a woken socket is not parked any more
    a.close(), b.close()


def test_a_parked_socket_wakes_once_on_its_timeout_and_a_repark_replaces_it(reactor):
    a, b = socket.socketpair()
    woke = []
    reactor.park(a, lambda: woke.append("first"), timeout=0.05)
    reactor.park(a, lambda: woke.append("second"), timeout=0.1)  # replaces the first
    time.sleep(0.4)
    assert woke == ["second"]
    reactor.park(a, lambda: woke.append("forgotten"), timeout=0.05)
    reactor.forget(a)
    b.send(b"x")
    time.sleep(0.2)
    assert woke == ["second"]
    a.close(), b.close()


def test_a_shut_down_socket_wakes_its_owner(reactor):
    a, b = socket.socketpair()
    done = threading.Event()
    reactor.park(a, done.set, timeout=30)
    a.shutdown(socket.SHUT_RDWR)  # what stop and pause do to a parked stream
    assert done.wait(5)
    a.close(), b.close()


def test_timers_run_in_order_unless_cancelled(reactor):
    ran = []
    reactor.call_later(0.1, lambda: ran.append(2))
    reactor.call_later(0.02, lambda: ran.append(1))
    reactor.call_later(0.05, lambda: ran.append("cancelled")).cancel()
    time.sleep(0.3)
    assert ran == [1, 2]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40))
def test_a_task_runs_alone_and_loses_no_wake(wakers):
    """Wakes from several threads at once: turns never overlap, and every wake is followed by a
    turn that starts after it (none is lost)."""
    r = Reactor("prop", workers=4)
    try:
        state = {"running": 0, "overlap": False, "turns": 0, "last_start": 0.0}
        lock = threading.Lock()

        def turn():
            with lock:
                state["running"] += 1
                state["overlap"] |= state["running"] > 1
                state["turns"] += 1
                state["last_start"] = time.monotonic()
            time.sleep(0.001)
            with lock:
                state["running"] -= 1
        task = Task(r, turn)
        stamps = []

        def wake(n):
            for _ in range(n + 1):
                stamps.append(time.monotonic())
                task.wake()
        threads = [threading.Thread(target=wake, args=(n,)) for n in wakers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 5
        while (state["running"] or state["last_start"] < max(stamps)) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not state["overlap"]
        assert state["last_start"] >= max(stamps)  # the last wake got a turn after it
        assert 1 <= state["turns"] <= len(stamps)
    finally:
        r.stop()


def test_hundreds_of_parked_sockets_use_the_same_threads(reactor):
    pairs = [socket.socketpair() for _ in range(400)]
    woken = []
    lock = threading.Lock()

    def wake(i):
        with lock:
            woken.append(i)
    try:
        before = threading.active_count()
        for i, (a, _b) in enumerate(pairs):
            reactor.park(a, lambda i=i: wake(i), timeout=60)
        for _a, b in pairs[::10]:
            b.send(b"x")
        deadline = time.monotonic() + 10
        while len(woken) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(woken) == list(range(0, 400, 10))
        assert threading.active_count() <= before + reactor.threads
    finally:
        for a, b in pairs:
            reactor.forget(a)
            a.close(), b.close()
