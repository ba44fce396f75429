"""Using recovery points: clones and restores cost what changed, not the volume's size.

- Clone create + delete of a point of an 8 TiB sparse volume (64 MiB written), beside ``nbdcopy``
  of the same 64 MiB of data out of a node (the least a copy-based test failover would cost).
- ``aim verify`` of a 1 GiB volume between two nodes, beside ``cat`` of the volume's file to
  /dev/null, and the digest bytes it puts on the wire over the volume's size.
- Restore of a 1 GiB volume with 1 % of its blocks changed since the point, beside ``nbdcopy`` of
  the whole point into a volume over NBD (what an operator without restore would do; the target
  has no snapshots, so the copy pays no copy-on-write).

- Failover (promote) of an 8 TiB sparse destination (64 MiB written), beside ``nbdcopy`` of that
  data out of the node (a copy-based failover); and ``--to-point`` of a 1 GiB volume with 1 % of its
  blocks changed since the point, beside ``nbdcopy`` of the whole point.
- Failback with 1 % of a 1 GiB volume written at DR and 0.5 % at the old source: bytes on the wire
  over the union of the changed blocks, and the time (command to caught up) beside
  ``rsync --inplace --no-whole-file`` of DR's image onto the old source's (rsync's delta transfer).
- Switchover of a 1 GiB volume under a write load: seconds from the command to the first write
  accepted at DR, beside ``nbdcopy`` of the volume (a copy-based move).

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
import time

from common import drop_caches, emit, median, timed

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


def verify_bench(workdir: str, repeat: int) -> list[dict]:
    """aim verify of a 1 GiB volume between two nodes on loopback, beside reading the source
    volume's file with ``cat > /dev/null`` (the disk's speed); and the digest bytes on the wire."""
    size = 1 << 30
    src, dst = start_node(os.path.join(workdir, "vsrc")), start_node(os.path.join(workdir, "vdst"))
    try:
        s, d = RemoteNode(src.api, src.token, timeout=600), RemoteNode(dst.api, dst.token, timeout=600)
        s.create_volume("v", size)
        d.create_volume("v-dr", size)
        fill(s, "v", size, os.urandom(8 << 20))
        s.replication.create("v-aim", "v", f"{dst.aim}/v-dr", dst.token)
        while (info := s.replication.info("v-aim"))["state"] != "replicating" or info["acked_seq"] != info["last_seq"]:
            time.sleep(0.2)
        times = {"warm": [], "cold": []}
        base = {"warm": [], "cold": []}
        wire = []
        path = os.path.join(workdir, "vsrc", "volumes", "v.img")
        for i in range(repeat):
            for cache in ("warm", "cold"):
                for what in (("verify", "cat") if i % 2 == 0 else ("cat", "verify")):
                    if cache == "cold":
                        drop_caches()
                    if what == "cat":
                        base[cache].append(timed(lambda: subprocess.run(f"cat {path} > /dev/null", shell=True,
                                                                        check=True)))
                        continue
                    t0 = time.perf_counter()
                    s.replication.verify("v-aim", False)
                    while (st := s.replication.verify_status("v-aim"))["state"] == "running":
                        time.sleep(0.02)
                    times[cache].append(time.perf_counter() - t0)
                    assert st["state"] == "done" and st["mismatched_ranges"] == 0, st
                    wire.append(st["digest_bytes"])
        s.close()
        d.close()
    finally:
        src.stop()
        dst.stop()
    rows = []
    for cache in ("warm", "cold"):
        t, b = median(times[cache]), median(base[cache])
        rows.append({"what": f"verify, 1 GiB, both nodes on this machine, {cache} page cache", "seconds": round(t, 3),
                     "baseline": f"cat of the volume's file > /dev/null, {cache}", "baseline_seconds": round(b, 3),
                     "ratio": round(b / t, 3)})
    return [*rows,
            {"what": "verify: digest bytes on the wire / volume size", "seconds": None,
             "baseline": "the volume's size", "baseline_seconds": None, "ratio": round(median(wire) / size, 6)}]


class Pair:
    """Two nodes on loopback with their clients."""

    def __init__(self, workdir: str, name: str) -> None:
        self.procs = [start_node(os.path.join(workdir, f"{name}-src")), start_node(os.path.join(workdir, f"{name}-dst"))]
        self.s, self.d = (RemoteNode(p.api, p.token, timeout=600) for p in self.procs)
        self.dst = self.procs[1]

    def replicated(self, size: int) -> None:
        """Volume v (filled) at the source, v-dr at the destination, AIM set v-aim caught up."""
        self.s.create_volume("v", size)
        self.d.create_volume("v-dr", size)
        fill(self.s, "v", size, os.urandom(8 << 20))
        self.s.replication.create("v-aim", "v", f"{self.dst.aim}/v-dr", self.dst.token)
        caught_up(self.s, "v-aim")

    def close(self) -> None:
        self.s.close()
        self.d.close()
        for p in self.procs:
            p.stop()


def caught_up(api, aim: str) -> dict:
    while (info := api.replication.info(aim))["state"] != "replicating" or info["acked_seq"] != info["last_seq"] \
            or info["queued_entries"]:
        time.sleep(0.02)
    return info


def failover_bench(workdir: str, repeat: int) -> list[dict]:
    p = Pair(workdir, "fo")
    try:
        p.s.create_volume("big", "8TiB")
        data = os.urandom(4 << 20)
        for i in range(16):  # 64 MiB spread over the volume
            p.s.write("big", i * (512 << 30), data)
        times = []
        for i in range(repeat):  # a new AIM set each time (the initial sync ships the 64 MiB)
            p.d.create_volume(f"big-dr{i}", "8TiB")
            p.s.replication.create(f"big-aim{i}", "big", f"{p.dst.aim}/big-dr{i}", p.dst.token)
            caught_up(p.s, f"big-aim{i}")
            times.append(timed(lambda i=i: p.d.replication.failover(f"big-aim{i}")))
            p.s.replication.delete(f"big-aim{i}")
        p.s.create_volume("small", 64 << 20)
        fill(p.s, "small", 64 << 20, data)
        base = [timed(lambda: subprocess.run(["nbdcopy", p.procs[0].nbd_uri("small"), "null:"], check=True))
                for _ in range(repeat)]
        rows = [{"what": "failover (promote), 8 TiB destination (64 MiB written)", "seconds": round(median(times), 4),
                 "baseline": "nbdcopy of the 64 MiB", "baseline_seconds": round(median(base), 4),
                 "ratio": round(median(times) / median(base), 4)}]
        # --to-point with 1 % of 1 GiB changed since the point
        size = 1 << 30
        p.s.create_volume("v", size)
        p.d.create_volume("v-dr", size)
        p.d.create_snapshot("v-dr-pit", "v-dr", "differential")
        fill(p.s, "v", size, os.urandom(8 << 20))
        p.d.create_volume("w", size)
        rng, times, base = random.Random(2), [], []
        for i in range(repeat):
            aim = f"v-aim{i}"
            p.s.replication.create(aim, "v", f"{p.dst.aim}/v-dr", p.dst.token)
            caught_up(p.s, aim)
            m = p.s.replication.issue_marker(aim, "v-dr-pit", f"p{i}")
            assert p.s.replication.wait(m["id"], 60)["state"] == "applied"
            for _ in range(size // BS // 100):
                p.s.write("v", rng.randrange(size // BS) * BS, os.urandom(BS))
            caught_up(p.s, aim)
            point = f"v-dr-pit@{p.s.replication.show(m['id'])['point']}"
            for what in (("failover", "copy") if i % 2 == 0 else ("copy", "failover")):
                if what == "failover":
                    times.append(timed(lambda: p.d.replication.failover(aim, point)))
                else:
                    base.append(timed(lambda: subprocess.run(
                        ["nbdcopy", p.dst.nbd_uri(point), p.dst.nbd_uri("w")], check=True)))
            p.s.replication.delete(aim)
            p.d.replication.delete(aim)
        rows.append({"what": "failover --to-point, 1 GiB, 1 % changed since the point", "seconds": round(median(times), 3),
                     "baseline": "nbdcopy of the whole point", "baseline_seconds": round(median(base), 3),
                     "ratio": round(median(times) / median(base), 4)})
        return rows
    finally:
        p.close()


def failback_bench(workdir: str, repeat: int) -> list[dict]:
    size, rng = 1 << 30, random.Random(3)
    ratios, times, base = [], [], []
    for i in range(repeat):
        p = Pair(workdir, f"fb{i}")
        try:
            p.replicated(size)
            p.s.replication.pause("v-aim")
            blocks = size // BS
            at_source = {rng.randrange(blocks) for _ in range(blocks // 200)}  # 0.5 %
            for b in at_source:
                p.s.write("v", b * BS, os.urandom(BS))
            p.d.replication.failover("v-aim")
            at_dr = {rng.randrange(blocks) for _ in range(blocks // 100)}  # 1 %
            for b in at_dr:
                p.d.write("v-dr", b * BS, os.urandom(BS))
            p.s.replication.resume("v-aim")
            while p.s.replication.info("v-aim")["state"] != "fenced":
                time.sleep(0.05)
            src_img = os.path.join(workdir, f"fb{i}-src", "volumes", "v.img")
            dst_img = os.path.join(workdir, f"fb{i}-dst", "volumes", "v-dr.img")
            a, b = os.path.join(workdir, "rsync-src.img"), os.path.join(workdir, "rsync-dst.img")
            subprocess.run(["cp", "--sparse=always", dst_img, a], check=True)
            subprocess.run(["cp", "--sparse=always", src_img, b], check=True)
            drop_caches()
            base.append(timed(lambda: subprocess.run(["rsync", "--inplace", "--no-whole-file", a, b], check=True)))
            os.unlink(a)
            os.unlink(b)
            drop_caches()
            t0 = time.perf_counter()
            p.d.replication.failback("v-aim")
            info = caught_up(p.d, "v-aim")
            times.append(time.perf_counter() - t0)
            ratios.append(info["bytes_sent"] / (len(at_source | at_dr) * BS))
        finally:
            p.close()
    return [{"what": "failback: bytes on the wire / union of changed blocks (1 % at DR, 0.5 % at the source)",
             "seconds": None, "baseline": "the union", "baseline_seconds": None, "ratio": round(median(ratios), 4)},
            {"what": "failback, 1 GiB: command to caught up", "seconds": round(median(times), 3),
             "baseline": "rsync --inplace --no-whole-file of the image", "baseline_seconds": round(median(base), 3),
             "ratio": round(median(times) / median(base), 4)}]


def switchover_bench(workdir: str, repeat: int) -> dict:
    import threading
    size = 1 << 30
    p = Pair(workdir, "so")
    try:
        p.replicated(size)
        times, base = [], []
        sides = [(p.procs[0], "v"), (p.procs[1], "v-dr")]
        for i in range(repeat):
            old, new = sides[i % 2], sides[(i + 1) % 2]
            stop = threading.Event()

            def load(node=old) -> None:  # a host writing at the primary, 4 KiB at a time
                c = RemoteNode(node[0].api, node[0].token)
                rng = random.Random(i)
                while not stop.is_set():
                    try:
                        c.write(node[1], rng.randrange(size // 4096) * 4096, os.urandom(4096))
                    except Exception:  # noqa: BLE001 - fenced: the load stops there
                        time.sleep(0.01)
                c.close()
            t = threading.Thread(target=load)
            t.start()
            time.sleep(1)
            c = RemoteNode(old[0].api, old[0].token, timeout=600)
            c2 = RemoteNode(new[0].api, new[0].token)
            t0 = time.perf_counter()
            c.replication.switchover("v-aim", 300)
            while True:
                try:
                    c2.write(new[1], 0, os.urandom(4096))
                    break
                except Exception:  # noqa: BLE001 - not writable yet
                    time.sleep(0.005)
            times.append(time.perf_counter() - t0)
            stop.set()
            t.join()
            c.close()
            c2.close()
            base.append(timed(lambda: subprocess.run(["nbdcopy", new[0].nbd_uri(new[1]), "null:"], check=True)))
    finally:
        p.close()
    return {"what": "switchover, 1 GiB under a write load: command to writes at DR", "seconds": round(median(times), 3),
            "baseline": "nbdcopy of the volume", "baseline_seconds": round(median(base), 3),
            "ratio": round(median(times) / median(base), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default=None, help="run one part: clone, restore, verify, failover, failback, switchover")
    args = ap.parse_args()
    if not shutil.which("nbdcopy"):
        sys.exit("needs nbdcopy (libnbd-bin: make deps)")
    workdir = tempfile.mkdtemp(prefix="aimsnap-bench-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    try:
        parts = {"clone": lambda: [clone_bench(workdir, args.repeat)],
                 "restore": lambda: [restore_bench(workdir, args.repeat)],
                 "verify": lambda: verify_bench(workdir, args.repeat),
                 "failover": lambda: failover_bench(workdir, args.repeat),
                 "failback": lambda: failback_bench(workdir, args.repeat),
                 "switchover": lambda: [switchover_bench(workdir, args.repeat)]}
        rows = [r for name, part in parts.items() if args.only in (None, name) for r in part()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit("recovery (clone, restore: aimsnap time / baseline time, lower is better; verify: baseline time / "
         "aimsnap time, higher is better; wire: bytes / volume size)", rows)
    print("targets: clone create+delete < 1 s on 8 TiB; restore <= 0.05x a full copy; verify >= 0.7x cat; "
          "wire <= 0.01; failover <= 2 s on 8 TiB; failback wire <= 1.1x the union, time <= 0.5x rsync")


if __name__ == "__main__":
    main()
