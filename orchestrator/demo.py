"""``aimsnap demo``: the engine's promise on one node, in a few seconds.

A hot-spot workload rewrites a few blocks of a volume many times; every interval a complete-image
snapshot is incremented (copying each changed block once) and a differential point in time is
enabled. At the end every point and the image are checked against what the volume held at their
enable. (The two-node replication demo grows from this as the AIM and orchestrator issues land.)
"""

import hashlib
import random
import shutil
import tempfile

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from engine import Node, read_chunks

BLOCK = 64 * 1024


def _digest(read, size: int) -> str:
    h = hashlib.sha256()
    for chunk in read_chunks(read, 0, size, 4 << 20):
        h.update(chunk)
    return h.hexdigest()


@click.command()
@click.option("--intervals", default=8, show_default=True, help="Increments to run.")
@click.option("--writes", default=400, show_default=True, help="Writes per interval.")
@click.option("--size", default="64MiB", show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the node root here.")
@click.option("--seed", default=1, show_default=True)
def demo(intervals: int, writes: int, size: str, keep: str | None, seed: int) -> int:
    """Run a short local demo of incremental snapshots and points in time, and verify them."""
    console = Console()
    root = keep or tempfile.mkdtemp(prefix="aimsnap-demo-")
    rng = random.Random(seed)
    checks: list[tuple[str, bool]] = []
    intervals_table = Table(title="every interval: host writes vs blocks the increment copied")
    for heading in ("interval", "host writes", "bytes written", "distinct blocks", "blocks copied"):
        intervals_table.add_column(heading, justify="right")
    with Node(root) as node:
        vol = node.create_volume("db01", size)
        node.create_snapshot("db01-ci", "db01", "complete-image")
        node.create_snapshot("db01-pit", "db01", "differential")
        nblocks = vol["size"] // BLOCK
        hot = [rng.randrange(nblocks) for _ in range(max(4, nblocks // 20))]  # 5 % of blocks take 90 % of writes
        expected: dict[str, str] = {}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("writing and incrementing", total=intervals)
            for i in range(intervals):
                touched: set[int] = set()
                written = 0
                for _ in range(writes):
                    block = rng.choice(hot) if rng.random() < 0.9 else rng.randrange(nblocks)
                    data = rng.randbytes(rng.choice((512, 4096, 16384)))
                    node.write("db01", block * BLOCK + rng.randrange(BLOCK - len(data) + 1), data)
                    touched.add(block)
                    written += len(data)
                node.flush("db01")
                source = _digest(lambda o, n: node.read("db01", o, n), vol["size"])
                inc = node.enable_snapshot("db01-ci")
                pit = node.enable_snapshot("db01-pit", f"t{i:02d}")
                expected[pit["point"]] = source
                image = _digest(lambda o, n: node.read_snapshot("db01-ci", None, o, n), vol["size"])
                checks.append((f"db01-ci after increment {i}", image == source))
                # the first increment also copies what existed before; later ones exactly the touched blocks
                checks.append((f"increment {i} copied only changed blocks", i == 0 or inc["blocks"] == len(touched)))
                intervals_table.add_row(str(i), str(writes), f"{written:,}", str(len(touched)), str(inc["blocks"]))
                progress.advance(task)
        for point, want in expected.items():
            got = _digest(lambda o, n: node.read_snapshot("db01-pit", point, o, n), vol["size"])
            checks.append((f"db01-pit@{point} equals db01 at its enable", got == want))
    console.print(intervals_table)
    table = Table(title="verification")
    table.add_column("check")
    table.add_column("result")
    for what, ok in checks:
        table.add_row(what, "[green]PASS[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    failures = sum(not ok for _, ok in checks)
    if keep:
        console.print(f"node root kept at {root}; try: aimsnap --root {root} snapshot list")
    else:
        shutil.rmtree(root, ignore_errors=True)
    console.print("[green]demo OK[/]" if not failures else f"[red]{failures} check(s) FAILED[/]")
    return 1 if failures else 0
