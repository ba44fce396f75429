"""A deterministic workload for the crash test: round r writes, sometimes enables snapshots,
flushes, and only then logs r. Run as a child process (``python crash_workload.py ROOT LOG``) it
resumes after the last logged round, so it can be killed and restarted any number of times."""

import os
import random
import sys

BS = 4096
NBLOCKS = 256
SIZE = NBLOCKS * BS
KEEP_POINTS = 4


def round_writes(r: int) -> list[tuple[int, bytes]]:
    """The writes of round r: a few disjoint, mostly unaligned ranges, each in its own block."""
    rng = random.Random(r)
    out = []
    for block in rng.sample(range(NBLOCKS), 4):
        start = rng.randrange(BS - 1)
        length = rng.randrange(1, BS - start + 1)
        out.append((block * BS + start, bytes([r % 251 + 1]) * length))
    return out


def enables_ci(r: int) -> bool:
    return r % 3 == 0


def point_of(r: int) -> str | None:
    return f"p{r}" if r % 4 == 0 else None


def deleted_in(r: int) -> str | None:
    """Round r deletes the point made KEEP_POINTS points ago."""
    old = r - 4 * KEEP_POINTS
    return point_of(old) if r % 4 == 0 and old > 0 else None


def state(r: int) -> bytearray:
    content = bytearray(SIZE)
    for i in range(1, r + 1):
        for offset, data in round_writes(i):
            content[offset:offset + len(data)] = data
    return content


def setup(node) -> None:
    if not node.list_volumes():
        node.create_volume("v", SIZE, BS)
        node.create_snapshot("v-ci", "v", "complete-image")
        node.create_snapshot("v-pit", "v", "differential")


def main(root: str, log: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from engine import AlreadyExists, Node, NotFound

    node = Node(root)
    setup(node)
    with open(log, "a+") as f:
        f.seek(0)
        done = [int(x) for x in f.read().split()]
    r = done[-1] if done else 0
    logf = open(log, "a")
    print("ready", flush=True)
    while True:
        r += 1
        for offset, data in round_writes(r):
            node.write("v", offset, data)
        if enables_ci(r):
            node.enable_snapshot("v-ci")
        if point := point_of(r):
            try:
                node.enable_snapshot("v-pit", point)
            except AlreadyExists:  # made by the round a kill interrupted
                pass
        if old := deleted_in(r):
            try:
                node.delete_point("v-pit", old)
            except NotFound:
                pass
        node.flush("v")
        logf.write(f"{r}\n")
        logf.flush()
        os.fsync(logf.fileno())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
