"""A peer that stops answering without closing anything (SIGSTOP: a hung host, a frozen VM, a
firewall that drops silently) ends the stream after ``--aim-stream-timeout``, at either end; it
is said where the operator looks (aim status, /metrics, the destination's log); nothing is lost
once the peer runs again. The timeout is 3 s here (120 s by default)."""

import os
import signal
import time

import pytest

from ..aimpair import Pair, read_all

TIMEOUT = ("--aim-stream-timeout", "3")
SIZE = 4 << 20


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path, src={"extra": TIMEOUT}, dst={"extra": TIMEOUT})
    yield p
    for side in (p.src, p.dst):
        os.kill(side.proc.proc.pid, signal.SIGCONT)  # never leave a stopped node behind
    p.stop()


def _until(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return got


def test_a_destination_that_stops_answering_is_reported_and_nothing_is_lost(pair):
    aim = pair.replicate("v", SIZE)
    api = pair.src.api
    api.write("v", 0, os.urandom(SIZE))
    pair.wait_caught_up(aim)
    os.kill(pair.dst.proc.proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    api.write("v", 4096, os.urandom(1 << 20))  # queued behind the silence
    marker = api.replication.issue_marker(aim, "v-dr-pit", "during")
    info = _until(lambda: (i := api.replication.info(aim))["state"] != "replicating" and i)
    took = time.monotonic() - t0
    assert "answered nothing in 3s" in info["last_error"], info
    assert 2.5 < took < 20, took  # the timeout ended it, neither sooner nor never
    assert info["queued_entries"] > 0 and api.replication.show(marker["id"])["state"] == "issued"
    metrics = api.metrics()
    assert f'aimsnap_aim_state{{aim_set="{aim}",state="replicating"}} 0.0' in metrics
    assert f'aimsnap_aim_errors_total{{aim_set="{aim}"}}' in metrics
    # it keeps trying (a handshake to a stopped process times out too) and says so, not forever silent
    _until(lambda: api.replication.info(aim)["errors"] >= 2, 60)
    os.kill(pair.dst.proc.proc.pid, signal.SIGCONT)
    assert api.replication.wait(marker["id"], 90)["state"] == "applied"
    pair.wait_caught_up(aim, timeout=90)
    assert read_all(pair.dst.api, "v-dr", SIZE) == read_all(api, "v", SIZE)


def test_a_source_that_stops_sending_is_let_go_by_the_destination(pair):
    aim = pair.replicate("v", SIZE)
    api = pair.src.api
    os.kill(pair.src.proc.proc.pid, signal.SIGSTOP)
    _until(lambda: "nothing from the source in 3s" in pair.dst.log())
    os.kill(pair.src.proc.proc.pid, signal.SIGCONT)
    api.write("v", 0, os.urandom(SIZE))  # the old connection is gone: the sender reconnects
    m = pair.marker(aim, "v-dr-pit", "after", wait=90)
    assert m["state"] == "applied"
    pair.wait_caught_up(aim)
    assert read_all(pair.dst.api, "v-dr", SIZE) == read_all(api, "v", SIZE)
