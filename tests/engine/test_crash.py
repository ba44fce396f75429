"""SIGKILL a process that writes, flushes and enables snapshots, at random moments, many times.
Each reopened node must open, be consistent, and hold every write flushed before the kill."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from engine import Node

from . import crash_workload as w
from ..conftest import FULL

KILLS = 100 if FULL else 24


def _check(root: str, log: str, checked: tuple[int, bytes] | None) -> tuple[int, bytes]:
    """Check the reopened node; ``checked`` is (round, image) of the increment the previous check
    made itself, still the image if no logged round has incremented since."""
    with open(log) as f:
        done = [int(x) for x in f.read().split()]
    R = done[-1] if done else 0
    before, after = w.state(R), w.state(R + 1)
    with Node(root) as node:
        w.setup(node)
        vol = node.read("v", 0, w.SIZE)
        touched = set()
        for offset, data in w.round_writes(R + 1):
            got = vol[offset:offset + len(data)]
            assert got in (before[offset:offset + len(data)], data), f"round {R + 1} write at {offset} is torn"
            touched.update(range(offset, offset + len(data)))
        for i in range(w.SIZE):
            if i not in touched and vol[i] != before[i]:
                raise AssertionError(f"byte {i} differs from the state after flushed round {R}")

        info = node.snapshot_info("v-ci")
        last_ci = max((r for r in range(1, R + 1) if w.enables_ci(r)), default=None)
        if info["state"] == "incomplete":
            assert w.enables_ci(R + 1), "an increment can only be incomplete if one was running"
        elif last_ci is not None:
            image = node.read_snapshot("v-ci", None, 0, w.SIZE)
            allowed = [w.state(last_ci)] + ([after] if w.enables_ci(R + 1) else [])
            if checked and last_ci <= checked[0]:
                allowed = [checked[1]] + ([after] if w.enables_ci(R + 1) else [])
            assert image in allowed, "complete image is neither the last nor the interrupted increment"

        points = {p["name"] for p in node.snapshot_info("v-pit")["points"]}
        for r in range(1, R + 2):
            name = w.point_of(r)
            if name is None:
                continue
            deleted = any(w.deleted_in(d) == name for d in range(r, R + 1))
            maybe = r == R + 1 or any(w.deleted_in(d) == name for d in (R + 1,))
            if not deleted and not maybe:
                assert name in points, f"point {name} made before the kill is gone"
            if name in points:
                assert node.read_snapshot("v-pit", name, 0, w.SIZE) == w.state(r), f"point {name} is wrong"
        # dirty tracking never under-reports: an increment now equals the volume exactly
        node.enable_snapshot("v-ci")
        assert node.read_snapshot("v-ci", None, 0, w.SIZE) == vol
    return R, vol


@pytest.mark.timeout(600)
def test_sigkill_at_random_moments(tmp_path):
    root, log = str(tmp_path / "node"), str(tmp_path / "rounds.log")
    rng = random.Random(int(os.environ.get("AIMSNAP_CRASH_SEED", "1")))
    rounds, checked = [], None
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, w.__file__, root, log], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait()
        checked = _check(root, log, checked)
        rounds.append(checked[0])
    assert rounds[-1] > KILLS, f"the workload made too little progress to mean anything: {rounds}"
