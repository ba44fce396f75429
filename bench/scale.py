"""Scale: what a node costs with many volumes, points in time and AIM sets.

Part 1, metadata: a root with N sparse volumes, a differential snapshot of each
and P points in time spread over them. Measured, at two sizes in one run so a ratio shows whether
a cost grows with the count (flat per item) or faster (O(n^2)):

* node open time in a fresh process (``Node(root)``; what ``node serve`` pays at start), against
  the same process opening an empty root (interpreter and imports: the baseline);
* ``volume list``, ``snapshot list`` and ``/metrics`` rendering, per item.

Part 2, AIM sets: for 10, 100 and 1,000 sets between two real nodes (sparse 1 GiB volumes, a
trickle of 4 KiB writes spread over every set, and 10 sets written hard through NBD at once):

* threads and peak RSS of each node process (targets at 1,000: <= 64 threads, <= 256 MiB);
* marker issue -> applied latency on idle sets while the 10 stream, p50 and p99 (target p99 <= 1 s);
* aggregate throughput of the 10 (bytes written through NBD until every set caught up) against one
  set alone in the same run, the number ``bench/replication.py`` reports (target >= 0.8), after a
  cold round reported apart (``cold_ratio``: the first writes of a set allocate volume blocks at
  both sites and grow journal files; ten sets doing that at once is slower than one);
* node open time of the source root afterwards (1,000 volumes and AIM sets) in a fresh process.

Part 3, the orchestrator: 1,000 ``auto-marker`` policies every minute, each on its own AIM set of
such a pair of nodes (real markers, applied at the destination): fire lateness (a run's start
past its scheduled time) and run durations (issue to applied), p50 and p99, and the outcomes.

    python bench/scale.py [--part metadata,aim,orchestrator] [--volumes 1000] [--points 50000] [--small 100]
                          [--sets 10,100,1000] [--hard-mib 800] [--policies 1000] [--minutes 2]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import emit, median, timed

from engine import Node  # noqa: E402 - common puts the repository on the path
from engine.serve.metrics import NodeMetrics  # noqa: E402
from orchestrator.demo.fleet import Fleet, rss_mib, threads  # noqa: E402
from orchestrator.demo.localnode import start_node  # noqa: E402

MiB = 1 << 20

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


# -- part 2: AIM sets ---------------------------------------------------------------------------------------
def trickle(fleet: Fleet, stop: threading.Event, per_second: float = 200.0) -> None:
    """4 KiB writes at random places of random sets, ``per_second`` in all."""
    rng, api = random.Random(1), fleet.api(fleet.src)
    while not stop.is_set():
        api.write(rng.choice(fleet.volumes), rng.randrange(256) * 4096, rng.randbytes(4096))
        time.sleep(1 / per_second)


def hard(fleet: Fleet, volumes: list[str], image: str) -> float:
    """``image`` copied into each of ``volumes`` through NBD at once; seconds until all caught up."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["nbdcopy", "-C", "1", image, f"nbd://{fleet.src.nbd}/{v}"]) for v in volumes]
    for p in procs:
        if p.wait():
            raise RuntimeError("nbdcopy failed")
    # what was written up to here is applied (the trickle goes on: "caught up" may never be seen);
    # one set asked at a time, every 10 ms (listing 1,000 sets every 0.2 s was a quarter of the
    # window; asking all ten every 10 ms loaded the source's API as much as the writers did)
    api = fleet.api(fleet.src)
    written = {v: api.replication.info(f"{v}-aim")["last_seq"] for v in volumes}
    deadline = time.monotonic() + 900
    for v, seq in written.items():
        while api.replication.info(f"{v}-aim")["acked_seq"] < seq:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{v}-aim not applied within 900 s")
            time.sleep(0.01)
    return time.perf_counter() - t0


def marker_latencies(fleet: Fleet, volumes: list[str], busy: threading.Event) -> list[float]:
    """Issue -> applied of one marker at a time on ``volumes`` while ``busy`` is set."""
    api, out = fleet.api(fleet.src), []
    for i, v in enumerate(volumes):
        if not busy.is_set():
            break
        t0 = time.perf_counter()
        m = api.replication.wait(api.replication.issue_marker(f"{v}-aim", f"{v}-dr-pit", f"lat{i}")["id"], 30)
        if m["state"] != "applied":
            raise RuntimeError(f"marker not applied: {m}")
        out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def aim_fleet(work: str, count: int, hard_bytes: int, repeat: int) -> dict:
    root = os.path.join(work, f"aim{count}")
    src, dst = start_node(os.path.join(root, "src")), start_node(os.path.join(root, "dst"))
    try:
        fleet = Fleet(src, dst, count, "1GiB", journal_limit="1GiB")
        t0 = time.perf_counter()
        fleet.create()
        fleet.wait(lambda s: s["state"] == "replicating", "replicating")
        created = time.perf_counter() - t0
        n_hard = min(10, count)
        one, each = os.path.join(work, "one.img"), os.path.join(work, "each.img")
        for path, size in ((one, hard_bytes), (each, hard_bytes // n_hard)):
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(os.urandom(size))
        stop, busy = threading.Event(), threading.Event()
        trickler = threading.Thread(target=trickle, args=(fleet, stop), daemon=True)
        trickler.start()
        singles, aggregates, lat = [], [], []
        idle = fleet.volumes[n_hard:] or fleet.volumes
        # A cold round first, reported apart: fresh volume blocks at both sites and new journal
        # segments (until a set has spares of its own), the cost of a set's first writes only.
        cold = hard_bytes / hard(fleet, fleet.volumes[:1], one)
        cold = n_hard * (hard_bytes // n_hard) / hard(fleet, fleet.volumes[:n_hard], each) / cold
        with ThreadPoolExecutor(1) as ex:
            for _ in range(repeat):
                singles.append(hard_bytes / hard(fleet, fleet.volumes[:1], one))
                busy.set()
                probe = ex.submit(marker_latencies, fleet, random.Random(len(lat)).sample(idle, min(100, len(idle))),
                                  busy)
                aggregates.append(n_hard * (hard_bytes // n_hard) / hard(fleet, fleet.volumes[:n_hard], each))
                busy.clear()
                lat += probe.result()
        stop.set()
        trickler.join()
        api = fleet.api(src)
        listed = median([timed(api.replication.list) for _ in range(5)])  # `aim status --json` of every set
        scraped = median([timed(api.metrics) for _ in range(5)])
        row = {"sets": count, "create_s": round(created, 1),
               "aim_list_ms": round(listed * 1000), "metrics_ms": round(scraped * 1000),
               **{f"{side}_threads": threads(p.proc.pid) for side, p in (("src", src), ("dst", dst))},
               **{f"{side}_peak_rss_mib": round(rss_mib(p.proc.pid, peak=True)) for side, p in (("src", src), ("dst", dst))},
               "marker_p50_s": round(pct(lat, 0.5), 3), "marker_p99_s": round(pct(lat, 0.99), 3), "markers": len(lat),
               "one_set_mib_s": round(median(singles) / MiB), f"{n_hard}_sets_mib_s": round(median(aggregates) / MiB),
               "aggregate_ratio": round(median(aggregates) / median(singles), 2), "cold_ratio": round(cold, 2)}
    finally:
        src.stop()
        dst.stop()
    row["src_open_s"] = round(open_seconds(os.path.join(root, "src"), repeat), 2)
    return row


# -- part 3: the orchestrator ---------------------------------------------------------------------------------
def policy_file(work: str, fleet: Fleet) -> str:
    """Every set declared, and an auto-marker policy every minute on each."""
    tokens = {}
    for side, proc in (("prod", fleet.src), ("dr", fleet.dst)):
        tokens[side] = os.path.join(work, f"{side}.token")
        with open(tokens[side], "w") as f:
            f.write(proc.token + "\n")
        os.chmod(tokens[side], 0o600)
    lines = ["version: 1", "nodes:",
             *(f'  {side}: {{api: "{p.api}", token_file: {tokens[side]}, aim: "{p.aim}"}}'
               for side, p in (("prod", fleet.src), ("dr", fleet.dst))), "resources:", "  volumes:"]
    lines += [f"    - {{node: prod, name: {v}, size: {fleet.size}}}" for v in fleet.volumes]
    lines += [f"    - {{node: dr, name: {v}-dr, size: {fleet.size}}}" for v in fleet.volumes]
    lines += ["  snapshots:", *(f"    - {{node: dr, name: {v}-dr-pit, source: {v}-dr, type: differential}}"
                                for v in fleet.volumes)]
    lines += ["  aim_sets:", *(f"    - {{node: prod, name: {v}-aim, source: {v}, to: {{node: dr, volume: {v}-dr}}}}"
                               for v in fleet.volumes)]
    lines += ["policies:"]
    for v in fleet.volumes:
        lines += [f"  - name: {v}-1m", "    kind: auto-marker", "    node: prod", f"    aim_set: {v}-aim",
                  "    every: 1m", f"    marker: {{destination_snapshot: {v}-dr-pit}}"]
    path = os.path.join(work, "policies.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def orchestrated(work: str, count: int, minutes: int) -> dict:
    from datetime import datetime

    from orchestrator.schedule.service import Orchestrator
    root = os.path.join(work, f"orch{count}")
    src, dst = start_node(os.path.join(root, "src")), start_node(os.path.join(root, "dst"))
    try:
        fleet = Fleet(src, dst, count, "1GiB", journal_limit="256MiB")
        fleet.create()
        fleet.wait(lambda s: s["state"] == "replicating", "replicating")
        orch = Orchestrator([policy_file(root, fleet)], os.path.join(root, "o.db"))
        orch.start()
        time.sleep(60 * minutes + 10)
        orch.shutdown(wait=True)
        runs = [r for r in orch.store.history(limit=10 ** 7) if r["scheduled_for"]]

        def at(text: str) -> datetime:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        late = [(at(r["started_at"]) - at(r["scheduled_for"])).total_seconds() for r in runs]
        took = [(at(r["finished_at"]) - at(r["started_at"])).total_seconds() for r in runs if r["finished_at"]]
        outcomes: dict[str, int] = {}
        for r in runs:
            outcomes[r["status"]] = outcomes.get(r["status"], 0) + 1
        return {"policies": count, "runs": len(runs), "outcomes": outcomes,
                "lateness_p50_s": round(pct(late, 0.5), 3), "lateness_p99_s": round(pct(late, 0.99), 3),
                "run_p50_s": round(pct(took, 0.5), 3), "run_p99_s": round(pct(took, 0.99), 3),
                "src_threads": threads(src.proc.pid), "dst_threads": threads(dst.proc.pid)}
    finally:
        src.stop()
        dst.stop()


def metadata(args: argparse.Namespace, work: str) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="metadata,aim,orchestrator")
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--points", type=int, default=50000)
    ap.add_argument("--small", type=int, default=100, help="the smaller root, same points per volume")
    ap.add_argument("--sets", default="10,100,1000")
    ap.add_argument("--hard-mib", type=int, default=800, help="written by the hard writers in each round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aimsnap-bench-scale-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    parts = args.part.split(",")
    try:  # every run leaves gigabytes of volumes and journals behind: removed, even when it fails
        if "metadata" in parts:
            metadata(args, work)
        if "aim" in parts:
            rows = [aim_fleet(work, int(n), args.hard_mib * MiB, args.repeat) for n in args.sets.split(",")]
            for r in rows:
                r["targets"] = "threads <= 64, RSS <= 256 MiB, p99 <= 1 s, ratio >= 0.8, open <= 5 s"
            emit("scale-aim", rows)
        if "orchestrator" in parts:
            emit("scale-orchestrator", [orchestrated(work, args.policies, args.minutes)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
