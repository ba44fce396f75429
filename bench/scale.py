"""Scale: what a node costs with many volumes, points in time and AIM sets.

Part 1, metadata (this file today): a root with N sparse volumes, a differential snapshot of each
and P points in time spread over them. Measured, at two sizes in one run so a ratio shows whether
a cost grows with the count (flat per item) or faster (O(n^2)):

* node open time in a fresh process (``Node(root)``; what ``node serve`` pays at start), against
  the same process opening an empty root (interpreter and imports: the baseline);
* ``volume list``, ``snapshot list`` and ``/metrics`` rendering, per item.

    python bench/scale.py [--volumes 1000] [--points 50000] [--small 100]

Part 2 (AIM sets by the hundred between two nodes: threads, RSS, marker latency, throughput)
lands with the AIM port's bounded threads (the scale issue).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from common import emit, median, timed

from engine import Node
from engine.serve.metrics import NodeMetrics

OPEN = "import sys, time; t = time.perf_counter(); from engine import Node; n = Node(sys.argv[1]); " \
       "print(time.perf_counter() - t); n.close()"


def build(root: str, volumes: int, points: int) -> float:
    """A root with ``volumes`` volumes (1 GiB, sparse), each with a differential, and ``points``
    points spread over them; the seconds it took."""
    t0 = time.perf_counter()
    node = Node(root)
    try:
        for i in range(volumes):
            node.create_volume(f"v{i:04d}", "1GiB")
            node.create_snapshot(f"v{i:04d}-pit", f"v{i:04d}", "differential")
        for j in range(points):
            i = j % volumes
            node.write(f"v{i:04d}", (j // volumes) * 4096, os.urandom(4096))
            node.enable_snapshot(f"v{i:04d}-pit", f"p{j:06d}")
            if j and j % 5000 == 0:
                print(f"  {j} points ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        node.close()
    return time.perf_counter() - t0


def open_seconds(root: str, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..")}
    return median([float(subprocess.run([sys.executable, "-c", OPEN, root], env=env, check=True, capture_output=True,
                                        text=True).stdout) for _ in range(repeat)])


def calls(root: str, repeat: int) -> dict[str, float]:
    node = Node(root)
    try:
        metrics = NodeMetrics(node)
        out = {}
        for name, fn in (("volume list", node.list_volumes), ("snapshot list", node.list_snapshots),
                         ("/metrics", metrics.render)):
            out[name] = median([timed(fn) for _ in range(repeat)])
        return out
    finally:
        node.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--points", type=int, default=50000)
    ap.add_argument("--small", type=int, default=100, help="the smaller root, same points per volume")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aimsnap-bench-scale-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    sizes = [(args.small, args.points * args.small // args.volumes), (args.volumes, args.points)]
    empty = os.path.join(work, "empty")
    Node(empty).close()
    base = open_seconds(empty, args.repeat)
    rows, per_item = [], {}
    for volumes, points in sizes:
        root = os.path.join(work, f"n{volumes}")
        built = build(root, volumes, points)
        opened = open_seconds(root, args.repeat)
        timed = calls(root, args.repeat)
        per_item[volumes] = {k: v / volumes for k, v in timed.items()}  # open: against the target, not per item
        rows.append({"volumes": volumes, "points": points, "build_s": round(built, 1),
                     "open_s": round(opened, 3), "empty_root_open_s": round(base, 3), "open_target": "<= 5 s",
                     **{f"{k}_ms": round(v * 1000, 2) for k, v in timed.items()}})
    emit("scale-metadata", rows)
    small, large = (per_item[v] for v, _ in sizes)
    emit("scale-metadata-growth", [{"cost": k, f"per item at {sizes[1][0]} / per item at {sizes[0][0]}":
                                    round(large[k] / small[k], 2) if small[k] > 0 else None,
                                    "target": "about 1 (linear)"} for k in small])


if __name__ == "__main__":
    main()
