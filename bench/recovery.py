"""Using recovery points: clones and restores cost what changed, not the volume's size.

- Clone create + delete of a point of an 8 TiB sparse volume (64 MiB written), beside ``nbdcopy``
  of the same 64 MiB of data out of a node (the least a copy-based test failover would cost).
- ``aim verify`` of a 1 GiB volume between two nodes, beside ``cat`` of the volume's file to
  /dev/null, and the digest bytes it puts on the wire over the volume's size.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("nbdcopy"):
        sys.exit("needs nbdcopy (libnbd-bin: make deps)")
    workdir = tempfile.mkdtemp(prefix="aimsnap-bench-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    try:
        rows = [clone_bench(workdir, args.repeat), restore_bench(workdir, args.repeat),
                *verify_bench(workdir, args.repeat)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit("recovery (clone, restore: aimsnap time / baseline time, lower is better; verify: baseline time / "
         "aimsnap time, higher is better; wire: bytes / volume size)", rows)
    print("targets: clone create+delete < 1 s on 8 TiB; restore <= 0.05x a full copy; verify >= 0.7x cat; "
          "wire <= 0.01")


if __name__ == "__main__":
    main()
