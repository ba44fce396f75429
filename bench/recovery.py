"""Using recovery points: clones and restores cost what changed, not the volume's size.

- Clone create + delete of a point of an 8 TiB sparse volume (64 MiB written), beside ``nbdcopy``
  of the same 64 MiB of data out of a node (the least a copy-based test failover would cost).
- Restore of a 1 GiB volume with 1 % of its blocks changed since the point, beside ``nbdcopy`` of
  the whole point into a volume over NBD (what an operator without restore would do; the target
  has no snapshots, so the copy pays no copy-on-write).

Each pair is measured in one run, alternating which goes first; the median of ``--repeat``.

    python bench/recovery.py [--repeat 5]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

from common import emit, median, timed

from engine import Node
from engine.client.remote import RemoteNode
from orchestrator.demo.localnode import start_node

BS = 64 << 10


def fill(api, name: str, size: int, chunk: bytes) -> None:
    for off in range(0, size, len(chunk)):
        api.write(name, off, chunk[: min(len(chunk), size - off)])


def clone_bench(workdir: str, repeat: int) -> dict:
    node = Node(os.path.join(workdir, "big"))
    node.create_volume("big", "8TiB")
    node.create_snapshot("big-pit", "big", "differential")
    data = os.urandom(4 << 20)
    for i in range(16):  # 64 MiB spread over the volume
        node.write("big", i * (512 << 30), data)
    node.flush("big")
    node.enable_snapshot("big-pit", "p")
    times = []
    for i in range(repeat):
        times.append(timed(lambda i=i: (node.create_clone(f"c{i}", "big-pit@p"), node.delete_clone(f"c{i}"))))
    node.close()
    # the baseline: the same 64 MiB copied out of a node over NBD
    proc = start_node(os.path.join(workdir, "small"))
    try:
        api = RemoteNode(proc.api, proc.token)
        api.create_volume("small", 64 << 20)
        fill(api, "small", 64 << 20, data)
        base = [timed(lambda: subprocess.run(["nbdcopy", proc.nbd_uri("small"), "null:"], check=True))
                for _ in range(repeat)]
        api.close()
    finally:
        proc.stop()
    t, b = median(times), median(base)
    return {"what": "clone create+delete, 8 TiB point (64 MiB written)", "seconds": round(t, 4),
            "baseline": "nbdcopy of the 64 MiB", "baseline_seconds": round(b, 4), "ratio": round(t / b, 4)}


def restore_bench(workdir: str, repeat: int) -> dict:
    size = 1 << 30
    proc = start_node(os.path.join(workdir, "restore"))
    try:
        api = RemoteNode(proc.api, proc.token, timeout=600)
        api.create_volume("v", size)
        fill(api, "v", size, os.urandom(8 << 20))
        api.create_snapshot("v-pit", "v", "differential")
        api.create_volume("w", size)  # the copy's target: a volume without snapshots (no copy-on-write)
        rng = random.Random(1)
        times, base = [], []
        for i in range(repeat):
            api.enable_snapshot("v-pit", f"p{i}")
            for b in rng.sample(range(size // BS), size // BS // 100):  # 1 % of the blocks
                api.write("v", b * BS, os.urandom(4096))
            order = ("restore", "copy") if i % 2 == 0 else ("copy", "restore")
            for what in order:
                if what == "restore":
                    times.append(timed(lambda i=i: api.restore_volume("v", f"v-pit@p{i}")))
                else:
                    base.append(timed(lambda i=i: subprocess.run(
                        ["nbdcopy", proc.nbd_uri(f"v-pit@p{i}"), proc.nbd_uri("w")], check=True)))
            for p in api.snapshot_info("v-pit")["points"]:  # keep the snapshot small between rounds
                api.delete_point("v-pit", p["name"])
        api.close()
    finally:
        proc.stop()
    t, b = median(times), median(base)
    return {"what": "restore, 1 GiB volume, 1 % changed", "seconds": round(t, 3),
            "baseline": "nbdcopy of the point into the volume", "baseline_seconds": round(b, 3),
            "ratio": round(t / b, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("nbdcopy"):
        sys.exit("needs nbdcopy (libnbd-bin: make deps)")
    workdir = tempfile.mkdtemp(prefix="aimsnap-bench-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    try:
        rows = [clone_bench(workdir, args.repeat), restore_bench(workdir, args.repeat)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit("recovery (ratio = aimsnap time / baseline time; lower is better)", rows)
    print("targets: clone create+delete < 1 s on 8 TiB; restore <= 0.05x a full copy")


if __name__ == "__main__":
    main()
