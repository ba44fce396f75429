"""A fault campaign on a live AIM set: a model of what the source must hold, markers issued
between writes, faults at random moments, and the checks afterwards (no acknowledged write lost,
markers applied in order, each applied marker's point equal to the source at its issue, and the
replica equal to the source)."""

import random
import threading
import time

from engine import EngineError

from .aimpair import Pair, read_all, read_point

SLOT = 4096
SLOTS = 512  # a 2 MiB volume


class Campaign:
    def __init__(self, pair: Pair, aim: str, seed: int) -> None:
        self.pair, self.aim = pair, aim
        self.rng = random.Random(seed)
        self.model = bytearray(SLOTS * SLOT)
        self.expected: dict[int, tuple[str, bytes]] = {}
        self.uncertain: dict[int, bytes] = {}
        self.failed_markers: list[dict] = []  # failed with a reason the verification allowed

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

    def marker(self, label: str) -> dict:
        m = self.pair.src.api.replication.issue_marker(self.aim, "v-dr-pit", label)
        self.expected[m["id"]] = (label, bytes(self.model))
        return m

    def round(self, i: int, fault) -> None:
        failed: list[BaseException] = []

        def run_fault() -> None:
            try:
                fault()
            except BaseException as e:  # noqa: BLE001 - the test fails with it below
                failed.append(e)
        t = threading.Timer(self.rng.uniform(0.0, 0.25), run_fault)
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
        if failed:
            raise failed[0]
        for _ in range(200):  # the source may still be starting
            try:
                self.resolve()
                break
            except EngineError:
                time.sleep(0.05)

    def verify(self, allow_failed: tuple[str, ...] = (), may_fail: set[int] = frozenset()) -> int:
        """The checks; the number of markers applied. A marker may fail only with a reason, and
        only if its error names one of ``allow_failed`` or its id is in ``may_fail``."""
        api = self.pair.src.api
        self.pair.wait_caught_up(self.aim, timeout=120)
        applied = []
        for marker_id, (label, content) in sorted(self.expected.items()):
            m = api.replication.wait(marker_id, 60)
            if m["state"] == "failed" and m["error"] and (marker_id in may_fail or
                                                          any(a in m["error"] for a in allow_failed)):
                self.failed_markers.append(m)
                continue
            assert m["state"] == "applied", m
            assert read_point(self.pair.dst.api, "v-dr-pit", m["point"], SLOTS * SLOT) == content, f"point {label}"
            applied.append(m)
        times = [m["applied_at"] for m in sorted(applied, key=lambda m: m["id"])]
        assert times == sorted(times), "markers were applied out of order"
        assert read_all(api, "v", SLOTS * SLOT) == bytes(self.model), "an acknowledged write was lost"
        assert read_all(self.pair.dst.api, "v-dr", SLOTS * SLOT) == bytes(self.model), "replica differs"
        return len(applied)
