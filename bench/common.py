"""Shared helpers for the benchmarks: timing, medians, peak RSS, a result table."""

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name: str, rows: list[dict]) -> None:
    """Print a table for people and one JSON line (``RESULT {...}``) for bench/run_all.py."""
    if rows:
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for r in rows:
            print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))
    print("RESULT " + json.dumps({"bench": name, "rows": rows}))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def drop_caches() -> None:
    """Start each measurement from disk where the machine lets us (root on Linux), else warm."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mib(pid: int) -> float:
    """Peak RSS of another process."""
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)


def fio_iops(uri: str, rw: str, seconds: int, size: int, cpus: set[int] | None = None) -> float:
    """IOPS of fio's nbd engine, 4 KiB blocks at iodepth 16 (on ``cpus`` only, if given)."""
    import subprocess
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    out = subprocess.run([*pin, "fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k",
                          "--iodepth=16", f"--size={size}", "--time_based", f"--runtime={seconds}",
                          "--output-format=json"], capture_output=True, text=True, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["read" if "read" in rw else "write"]["iops"]


def pin(pid: int, cpus: set[int]) -> None:
    """Run every thread of a process on ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def topology(prod: str = "prod", dr: str = "dr", token_file: str = "t") -> list[str]:
    """The YAML lines of a policy file's header: two nodes, a replicated volume `v` -> `v-dr` with
    a differential `v-dr-pit`, and the AIM set `a`; policies follow."""
    return ["version: 1", "nodes:",
            f'  {prod}: {{api: "http://127.0.0.1:7410", token_file: {token_file}, aim: "127.0.0.1:7411"}}',
            f'  {dr}: {{api: "http://127.0.0.1:7420", token_file: {token_file}, aim: "127.0.0.1:7421"}}',
            "resources:", "  volumes:", f"    - {{node: {prod}, name: v, size: 1GiB}}",
            f"    - {{node: {dr}, name: v-dr, size: 1GiB}}", "  snapshots:",
            f"    - {{node: {dr}, name: v-dr-pit, source: v-dr, type: differential}}", "  aim_sets:",
            f"    - {{node: {prod}, name: a, source: v, to: {{node: {dr}, volume: v-dr}}}}", "policies:"]
