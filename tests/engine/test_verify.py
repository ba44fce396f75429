"""Block-exact verify of an AIM set, in one process (the destination's AIM port handler on a
socketpair per connection): exact under concurrent writes, finds exactly the ranges corrupted
behind the engine's back, repairs them, and sends only digests."""

import os
import random
import threading
import time

from engine.aim.verify import RANGE

from .test_aim_inprocess import SIZE, TOKEN, _caught_up, sites  # noqa: F401 - the fixture

BIG = 16 << 20


def _verify(src, repair: bool = False) -> dict:
    src.replication.verify("v-aim", repair)
    deadline = time.monotonic() + 60
    while (st := src.replication.verify_status("v-aim"))["state"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.02)
    assert st["state"] == "done", st
    return st


def _setup(src, dst, rng):
    dst.delete_snapshot("v-dr-pit")
    dst.delete_volume("v-dr")
    dst.create_volume("v-dr", BIG, "4KiB")
    src.delete_volume("v")
    src.create_volume("v", BIG, "4KiB")
    for _ in range(200):
        src.write("v", rng.randrange(BIG // 4096) * 4096, rng.randbytes(4096))
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN)
    _caught_up(src, "v-aim")


def test_verify_is_exact_under_writes_and_repairs_what_was_corrupted(sites):  # noqa: F811
    src, dst, link, _ = sites
    rng = random.Random(3)
    _setup(src, dst, rng)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            src.write("v", rng.randrange(BIG // 4096) * 4096, os.urandom(4096))
    t = threading.Thread(target=writer)
    t.start()
    try:
        healthy = _verify(src)
    finally:
        stop.set()
        t.join()
    assert healthy["mismatched_ranges"] == 0 and healthy["bytes_compared"] == BIG
    assert healthy["digest_bytes"] <= BIG // 100
    _caught_up(src, "v-aim")
    # a few bytes changed in the destination's file, behind the engine's back
    bad = sorted({rng.randrange(BIG // RANGE) for _ in range(3)})
    for i in bad:
        os.pwrite(dst.volume("v-dr").fd, b"rot", i * RANGE + rng.randrange(RANGE - 3))
    found = _verify(src)
    assert found["ranges"] == [i * RANGE for i in bad] and found["repaired_ranges"] == 0
    fixed = _verify(src, repair=True)
    assert fixed["ranges"] == [i * RANGE for i in bad] and fixed["remaining"] == [] and fixed["repaired_ranges"] == len(bad)
    assert _verify(src)["mismatched_ranges"] == 0
    _caught_up(src, "v-aim")
    assert dst.read("v-dr", 0, BIG) == src.read("v", 0, BIG)
    assert src.replication.info("v-aim")["last_verify"]["mismatched_ranges"] == 0
    assert not src.frozen and not dst.frozen  # the temporary points are gone


def test_a_verify_that_gives_up_leaves_no_point_behind(sites, monkeypatch):  # noqa: F811
    """The destination reaches the verify marker only after the source gave up waiting: nobody
    asks for its digests, and its frozen view (copy-on-write on every later write) goes by itself."""
    import engine.aim.applier as applier
    import engine.aim.verify as verify
    src, dst, link, _ = sites
    rng = random.Random(4)
    _setup(src, dst, rng)
    monkeypatch.setattr(verify, "REACH_TIMEOUT", 0.3)
    monkeypatch.setattr(applier, "CLAIM_TIMEOUT", 0.5)
    src.replication.pause("v-aim")
    src.replication.verify("v-aim")
    deadline = time.monotonic() + 20
    while src.replication.verify_status("v-aim")["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "did not reach the verify point" in src.replication.verify_status("v-aim")["error"]
    src.replication.resume("v-aim")
    _caught_up(src, "v-aim")
    while dst.frozen:
        assert time.monotonic() < deadline, "the unclaimed view stayed"
        time.sleep(0.05)
    assert _verify(src)["mismatched_ranges"] == 0
