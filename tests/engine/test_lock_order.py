"""The lock order (engine/node.py) under load: many threads on one pair of nodes issuing markers,
enabling snapshots and snapshot sets, deleting points and snapshots, pruning and writing, for
15 s (60 s with AIMSNAP_FULL=1), under a watchdog that fails the test on any hang and prints
every thread's stack."""

import random
import sys
import threading
import time
import traceback

import pytest

from engine import AlreadyExists, Conflict, EngineError, Node, NotFound

from ..aimlink import Link, Recorder
from ..conftest import FULL
from engine.aim.receiver import Receiver

SECONDS = 60 if FULL else 15
TOKEN = "lock-order-token-0123456789"
SIZE = 2 << 20


def _stacks() -> str:
    frames = sys._current_frames()
    return "\n".join(f"--- {t.name}\n" + "".join(traceback.format_stack(frames[t.ident]))
                     for t in threading.enumerate() if t.ident in frames)


@pytest.fixture
def pair(tmp_path):
    dst = Node(str(tmp_path / "dst"))
    dst.create_volume("v-dr", SIZE, "4KiB")
    dst.create_snapshot("v-dr-pit", "v-dr", "differential")
    dst.create_snapshot("v-dr-ci", "v-dr", "complete-image")
    receiver = Receiver(dst, TOKEN)
    link = Link(receiver)
    src = Node(str(tmp_path / "src"), connect=link.connect, delay=Recorder())
    src.create_volume("v", SIZE, "4KiB")
    src.create_snapshot("v-pit", "v", "differential")
    src.create_snapshot("v-ci", "v", "complete-image")
    src.create_snapshot_set("v-set", ["v-pit", "v-ci"])
    src.replication.start()
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", TOKEN, "4MiB")
    yield src, dst
    src.close()
    receiver.stop()
    dst.close()


def test_no_hang_under_concurrent_markers_enables_deletes_and_writes(pair):
    src, dst = pair
    deadline = time.monotonic() + SECONDS
    errors: list[str] = []
    counts: dict[str, int] = {}

    def loop(name: str, body) -> threading.Thread:
        def run() -> None:
            rng = random.Random(name)
            n = 0
            while time.monotonic() < deadline:
                try:
                    body(rng, n)
                except (NotFound, AlreadyExists, Conflict):
                    pass  # another thread got there first: expected
                except EngineError as e:
                    if "tracking dirty blocks" not in str(e):
                        errors.append(f"{name}: {e}")
                except Exception:  # noqa: BLE001 - reported below with the thread's name
                    errors.append(f"{name}: {traceback.format_exc()}")
                n += 1
            counts[name] = n
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    def write(rng, n):
        src.write("v", rng.randrange(SIZE // 4096) * 4096, rng.randbytes(4096))
        if n % 50 == 0:
            src.flush("v")

    def marker(rng, n):
        m = src.replication.issue_marker("v-aim", "v-dr-pit", f"m{n}")
        src.replication.wait(str(m["id"]), 0.5)

    def prune_destination(rng, n):  # retention at the DR node while markers enable the same snapshot
        points = dst.snapshot_info("v-dr-pit")["points"]
        if len(points) > 3:
            dst.delete_point("v-dr-pit", points[0]["name"])
        time.sleep(0.001)

    def enable_destination(rng, n):
        dst.enable_snapshot("v-dr-ci")

    def churn_destination(rng, n):  # a snapshot of the replica, created, enabled and deleted
        dst.create_snapshot(f"x{n}", "v-dr", "differential")
        dst.enable_snapshot(f"x{n}", "p")
        dst.delete_point(f"x{n}", "p")
        dst.delete_snapshot(f"x{n}")

    def enable_set(rng, n):
        src.enable_snapshot_set("v-set", f"s{n}")

    def prune_source(rng, n):
        points = src.snapshot_info("v-pit")["points"]
        if len(points) > 3:
            src.delete_point("v-pit", points[rng.randrange(len(points))]["name"])

    def read_status(rng, n):
        src.replication.list()
        src.list_snapshots()
        dst.list_volumes()
        time.sleep(0.002)

    threads = [loop(name, body) for name, body in (
        ("writer-1", write), ("writer-2", write), ("marker", marker), ("prune-dst", prune_destination),
        ("enable-dst", enable_destination), ("churn-dst", churn_destination), ("enable-set", enable_set),
        ("prune-src", prune_source), ("status", read_status))]
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 30)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads hung: {hung}\n{_stacks()}"
    assert errors == []
    assert all(counts.get(t.name, 0) > 0 for t in threads), counts
    # and it still replicates: a marker after the storm lands and the replica equals the source
    m = src.replication.wait(str(src.replication.issue_marker("v-aim", "v-dr-pit", "final")["id"]), 30)
    assert m["state"] == "applied", m
    assert dst.read_snapshot("v-dr-pit", m["point"], 0, SIZE) == src.read("v", 0, SIZE)
