"""Fault campaigns on a live AIM set: SIGKILL the source, SIGKILL the destination, cut the TCP
connection, corrupt frames in flight, overflow the journal limit; each at random moments, at
least 20 times. Afterwards no acknowledged write is lost, applied markers are in order, every
applied marker's point equals the source at its issue, and the replica equals the source."""

import random
import threading
import time


from engine import EngineError

from ..aimpair import Pair, read_all, read_point
from ..conftest import FULL
from ..tcpproxy import Proxy

SLOT = 4096
SLOTS = 512  # a 2 MiB volume
ROUNDS = 40 if FULL else 20


class Campaign:
    def __init__(self, pair: Pair, aim: str, seed: int) -> None:
        self.pair, self.aim = pair, aim
        self.rng = random.Random(seed)
        self.model = bytearray(SLOTS * SLOT)
        self.expected: dict[int, tuple[str, bytes]] = {}
        self.uncertain: dict[int, bytes] = {}

    def write(self) -> None:
        slot = self.rng.randrange(SLOTS)
        data = self.rng.randbytes(SLOT)
        try:
            self.pair.src.api.write("v", slot * SLOT, data)
            self.model[slot * SLOT:(slot + 1) * SLOT] = data
        except EngineError:  # the source died under us: the write may or may not be there
            self.uncertain[slot] = data
            raise

    def resolve(self) -> None:
        """After a source restart: an unacknowledged write is either there or not, nothing else."""
        for slot, data in self.uncertain.items():
            got = self.pair.src.api.read("v", slot * SLOT, SLOT)
            assert got in (bytes(self.model[slot * SLOT:(slot + 1) * SLOT]), data), f"slot {slot} is torn"
            self.model[slot * SLOT:(slot + 1) * SLOT] = got
        self.uncertain.clear()

    def marker(self, label: str) -> None:
        m = self.pair.src.api.replication.issue_marker(self.aim, "v-dr-pit", label)
        self.expected[m["id"]] = (label, bytes(self.model))

    def round(self, i: int, fault) -> None:
        t = threading.Timer(self.rng.uniform(0.0, 0.25), fault)
        t.start()
        try:
            for _ in range(self.rng.randrange(3, 15)):
                self.write()
            self.marker(f"r{i}")
            for _ in range(self.rng.randrange(0, 5)):
                self.write()
        except EngineError:
            pass
        t.join()
        for _ in range(200):  # the source may still be starting
            try:
                self.resolve()
                break
            except EngineError:
                time.sleep(0.05)

    def verify(self, allow_failed: tuple[str, ...] = ()) -> int:
        api = self.pair.src.api
        self.pair.wait_caught_up(self.aim, timeout=120)
        applied = []
        for marker_id, (label, content) in sorted(self.expected.items()):
            m = api.replication.wait(marker_id, 60)
            if m["state"] == "failed" and allow_failed and any(a in m["error"] for a in allow_failed):
                continue
            assert m["state"] == "applied", m
            assert read_point(self.pair.dst.api, "v-dr-pit", m["point"], SLOTS * SLOT) == content, f"point {label}"
            applied.append(m)
        times = [m["applied_at"] for m in sorted(applied, key=lambda m: m["id"])]
        assert times == sorted(times), "markers were applied out of order"
        assert read_all(api, "v", SLOTS * SLOT) == bytes(self.model), "an acknowledged write was lost"
        assert read_all(self.pair.dst.api, "v-dr", SLOTS * SLOT) == bytes(self.model), "replica differs"
        return len(applied)


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
            def corrupt() -> None:
                proxy.corrupt_next += 1
            c.round(i, corrupt)
            # one corruption at a time: a pile of them would fail every reconnect in a row, and the
            # sender's backoff (up to 30 s) would then be what this test measures
            deadline = time.monotonic() + 10
            while proxy.corrupt_next and time.monotonic() < deadline:
                c.write()
                time.sleep(0.05)
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
