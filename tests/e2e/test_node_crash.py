"""SIGKILL the node while real NBD clients write; after a restart every acknowledged durable
write (FUA, or followed by a completed FLUSH) is there, snapshots are intact, and dirty tracking
has not under-reported."""

import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pytest

from ..cli import aimsnap
from ..conftest import FULL
from engine.client.nbd import NbdClient
from orchestrator.demo.localnode import start_node

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-utils (installed by .ci/run)")
SLOT = 4096
SLOTS = 1024  # 4 MiB volume: the lower half for the raw client, the upper half for qemu-io
KILLS = 20 if FULL else 5


class Writers:
    """Two clients writing until the node dies; what each had acknowledged, and what was in flight."""

    def __init__(self, node, rng: random.Random) -> None:
        self.node, self.rng = node, rng
        self.acked: dict[int, bytes] = {}
        self.in_flight: dict[int, bytes] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.raw), threading.Thread(target=self.qemu)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(30)

    def _record(self, slot: int, data: bytes, done: bool) -> None:
        with self.lock:
            if done:
                self.acked[slot] = data
                self.in_flight.pop(slot, None)
            else:
                self.in_flight[slot] = data

    def raw(self) -> None:
        try:
            c = NbdClient(self.node.nbd, "v")
            while True:
                slot = self.rng.randrange(SLOTS // 2)
                data = os.urandom(SLOT)
                self._record(slot, data, False)
                if c.write(slot * SLOT, data, flags=1)[0] == 0:  # FUA: durable when acknowledged
                    self._record(slot, data, True)
        except (OSError, ConnectionError, AssertionError):
            return

    def qemu(self) -> None:
        while True:
            slot = self.rng.randrange(SLOTS // 2, SLOTS)
            byte = self.rng.randrange(1, 256)
            self._record(slot, bytes([byte]) * SLOT, False)
            p = subprocess.run(["qemu-io", "-f", "raw", self.node.nbd_uri("v"), "-c",
                                f"write -P {byte} {slot * SLOT} {SLOT}", "-c", "flush"], capture_output=True)
            if p.returncode != 0 or b"error" in p.stderr.lower() + p.stdout.lower():
                return
            self._record(slot, bytes([byte]) * SLOT, True)


def test_sigkill_during_nbd_writes(tmp_path):
    rng = random.Random(3)
    root = str(tmp_path / "node")
    node = start_node(root)
    env = node.cli_env()
    assert aimsnap("volume", "create", "v", "--size", str(SLOTS * SLOT), env=env).code == 0
    assert aimsnap("snapshot", "create", "v-ci", "--source", "v", "--type", "complete-image", env=env).code == 0
    assert aimsnap("snapshot", "create", "v-pit", "--source", "v", "--type", "differential", env=env).code == 0
    expected_points: dict[str, bytes] = {}
    acked: dict[int, bytes] = {}
    for cycle in range(KILLS):
        writers = Writers(node, rng)
        writers.start()
        time.sleep(rng.uniform(0.3, 1.0))
        node.stop(signal.SIGKILL)
        writers.join()
        node = start_node(root)
        env = node.cli_env()
        acked.update(writers.acked)
        content = aimsnap("volume", "read", "v", env=env).out
        for slot, data in acked.items():
            got = content[slot * SLOT:(slot + 1) * SLOT]
            assert got == data or got == writers.in_flight.get(slot), f"cycle {cycle}: acknowledged write to slot {slot} lost"
            acked[slot] = got
        for point, want in expected_points.items():
            assert aimsnap("snapshot", "read", f"v-pit@{point}", env=env).out == want, f"point {point} changed"
        # an increment now must equal the volume: dirty tracking survived the kill
        assert aimsnap("snapshot", "enable", "v-ci", env=env).code == 0
        assert aimsnap("snapshot", "read", "v-ci", env=env).out == content
        assert aimsnap("snapshot", "enable", "v-pit", "--point", f"c{cycle}", env=env).code == 0
        expected_points[f"c{cycle}"] = content
    assert len(acked) > 50, "too few acknowledged writes for the test to mean anything"
    assert node.stop() == 0
