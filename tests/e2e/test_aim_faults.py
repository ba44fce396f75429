"""Fault campaigns on a live AIM set: SIGKILL the source, SIGKILL the destination, cut the TCP
connection, corrupt frames in flight, overflow the journal limit; each at random moments, at
least 20 times. Afterwards no acknowledged write is lost, applied markers are in order, every
applied marker's point equals the source at its issue, and the replica equals the source."""

import time

from ..campaign import SLOT, SLOTS, Campaign
from ..conftest import FULL
from ..tcpproxy import Proxy

ROUNDS = 40 if FULL else 20


def test_sigkill_the_source(pair):
    c = Campaign(pair, pair.replicate("v", SLOTS * SLOT), seed=1)
    for i in range(ROUNDS):
        c.round(i, lambda: pair.src.restart())
    assert c.verify() >= ROUNDS // 2


def test_sigkill_the_destination(pair):
    c = Campaign(pair, pair.replicate("v", SLOTS * SLOT), seed=2)
    for i in range(ROUNDS):
        c.round(i, lambda: pair.dst.restart())
    assert c.verify() == len(c.expected)


def test_drop_the_connection_and_corrupt_frames(pair):
    proxy = Proxy(pair.dst.proc.aim, seed=3)
    try:
        c = Campaign(pair, pair.replicate("v", SLOTS * SLOT, to=proxy.address), seed=3)
        for i in range(ROUNDS):
            c.round(i, proxy.drop)
        for i in range(ROUNDS, 2 * ROUNDS):
            c.round(i, proxy.corrupt)
            # one corruption at a time, each into a healthy stream: a corruption that hits the
            # reconnect after the last one fails a session that made no progress, the backoff grows
            # (as it must), and a pile of them would make the backoff (up to 30 s) what this measures
            deadline = time.monotonic() + 10
            while proxy.corrupt_next and time.monotonic() < deadline:
                c.write()
                time.sleep(0.05)
            pair.wait_caught_up(c.aim, timeout=60)
        assert c.verify() == len(c.expected)
        assert proxy.dropped >= ROUNDS and proxy.corrupted >= ROUNDS // 2
        assert "checksum mismatch" in pair.dst.log() or "bad frame" in pair.dst.log()
    finally:
        proxy.close()


def test_journal_limit_overflow_and_resync(pair):
    """Pause shipping, write past the journal limit, resume: the set tracks dirty blocks, fails
    the markers issued meanwhile with that reason, resyncs only dirty blocks, and carries on."""
    aim = pair.replicate("v", SLOTS * SLOT, journal_limit="1MiB")
    c = Campaign(pair, aim, seed=4)
    api = pair.src.api
    overflows = 0
    for i in range(ROUNDS):
        api.replication.pause(aim)
        pair.wait_state(aim, "paused")
        for _ in range(300):  # 1.2 MiB: past the limit
            c.write()
        info = api.replication.info(aim)
        assert info["overflowed"] and info["dirty_blocks"] > 0 and info["queued_bytes"] == 0
        overflows += 1
        c.marker(f"during{i}")
        api.replication.resume(aim)
        c.round(i, lambda: None)  # a marker that may land in the resync
        pair.wait_caught_up(aim)
        c.marker(f"after{i}")
    applied = c.verify(allow_failed=("journal limit", "resynchronisation"))
    assert overflows == ROUNDS and applied >= ROUNDS
    failed = [m for m in api.replication.markers(aim, 1000) if m["state"] == "failed"]
    assert len(failed) >= ROUNDS and all("journal limit" in m["error"] or "resynchron" in m["error"] for m in failed)
