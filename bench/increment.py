"""Complete-image increments: time follows changed bytes, not volume size.

On a 1 GiB volume, an increment at 0.1 %, 1 %, 10 % and 100 % dirty blocks, beside
``os.copy_file_range`` + fsync of the same block ranges between two plain files in the same run
(ratio = baseline time / increment time: 1.0 means the engine adds nothing). Peak RSS is measured
in a fresh process per volume size, to show it does not grow with the volume.

    python bench/increment.py [--size 1GiB] [--repeat 3]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

from common import drop_caches, emit, median, peak_rss_mib, timed

from engine import Node, parse_size
from engine.storage.bitmap import runs
from engine.storage.fsutil import copy_range

BS = 64 * 1024
FRACTIONS = (0.001, 0.01, 0.10, 1.0)


def fill(node: Node, name: str, size: int) -> None:
    chunk = os.urandom(4 << 20)
    for off in range(0, size, len(chunk)):
        node.write(name, off, chunk[: min(len(chunk), size - off)])
    node.flush(name)


def dirty(node: Node, name: str, blocks: list[int]) -> None:
    for b in blocks:
        node.write(name, b * BS, os.urandom(4096))
    node.flush(name)


def baseline(src: str, dst: str, blocks: list[int], size: int) -> float:
    """copy_file_range + fsync of the same runs of blocks, plain files, no engine."""
    bits = bytearray((size // BS + 7) // 8)
    for b in blocks:
        bits[b >> 3] |= 1 << (b & 7)

    def run() -> None:
        sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
        try:
            for first, count in runs(bits, size // BS, 256):
                copy_range(sfd, dfd, first * BS, count * BS)
            os.fdatasync(dfd)
        finally:
            os.close(sfd)
            os.close(dfd)
    return timed(run)


def measure(size: int, repeat: int, cold: bool) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="aimsnap-bench-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    try:
        node = Node(os.path.join(workdir, "node"))
        node.create_volume("v", size)
        fill(node, "v", size)
        node.create_snapshot("v-ci", "v", "complete-image")
        node.enable_snapshot("v-ci")  # the full first copy
        plain = os.path.join(workdir, "plain.img")
        shutil.copyfile(node.volume("v").path, plain)
        rng = random.Random(1)
        nblocks = size // BS
        rows = []
        for fraction in FRACTIONS:
            inc_times, base_times = [], []
            for i in range(repeat):
                blocks = rng.sample(range(nblocks), max(1, int(nblocks * fraction)))
                dirty(node, "v", blocks)
                # alternate which goes first, so neither always meets the other's cache or writeback
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    if cold:
                        drop_caches()
                    if which == 0:
                        inc_times.append(timed(lambda: node.enable_snapshot("v-ci")))
                    else:
                        base_times.append(baseline(node.volume("v").path, plain, blocks, size))
            inc, base = median(inc_times), median(base_times)
            rows.append({"cache": "cold" if cold else "warm", "dirty": f"{fraction * 100:g}%", "blocks": len(blocks), "increment_s": inc,
                         "copy_file_range_s": base, "ratio": base / inc,
                         "MiB_per_s": len(blocks) * BS / inc / (1 << 20)})
        node.close()
        full = rows[-1]["increment_s"]  # rows of this cache mode only
        for row in rows:
            row["vs_100%"] = row["increment_s"] / full
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rss_worker(size: int) -> None:
    """Fill, then a 100 % increment, in this process; print peak RSS."""
    workdir = tempfile.mkdtemp(prefix="aimsnap-bench-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    try:
        with Node(os.path.join(workdir, "node")) as node:
            node.create_volume("v", size)
            node.create_snapshot("v-ci", "v", "complete-image")
            node.enable_snapshot("v-ci")
            fill(node, "v", size)
            node.enable_snapshot("v-ci")
        print(f"{peak_rss_mib():.1f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rss-worker", default=None)
    args = ap.parse_args()
    if args.rss_worker:
        rss_worker(parse_size(args.rss_worker))
        return
    size = parse_size(args.size)
    # warm: the dirty blocks were just written and sit in the page cache, as in production where an
    # increment follows the writes by minutes; cold: caches dropped before each run (root only)
    rows = measure(size, args.repeat, cold=False)
    cold_rows = measure(size, args.repeat, cold=True)
    emit("increment", rows + cold_rows)
    rss = []
    for s in ("256MiB", args.size):
        out = subprocess.run([sys.executable, __file__, "--rss-worker", s], capture_output=True, text=True, check=True)
        rss.append({"volume": s, "peak_rss_MiB": float(out.stdout.strip())})
    emit("increment-rss", rss)
    for rs in (rows, cold_rows):
        _targets(rs, rss)


def _targets(rows: list[dict], rss: list[dict]) -> None:
    one = next(r for r in rows if r["dirty"] == "1%")
    print(f"{rows[0]['cache']} targets: 1% costs {one['vs_100%'] * 100:.1f}% of 100% (<= 3%); "
          f"100% reaches {rows[-1]['ratio'] * 100:.0f}% of copy_file_range+fsync (>= 80%); "
          f"RSS {rss[0]['peak_rss_MiB']:.0f} -> {rss[1]['peak_rss_MiB']:.0f} MiB")


if __name__ == "__main__":
    main()
