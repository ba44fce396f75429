"""Many AIM sets between two real nodes at once (the scale test and ``bench/scale.py``): created in
parallel through the control API, watched with one list call per round, and what each node
process costs (threads, resident memory) read from ``/proc``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from engine.client.remote import RemoteNode

from .localnode import NodeProc


class Fleet:
    """``count`` sets ``PREFIXnnnn-aim``: source volume ``PREFIXnnnn``, destination volume
    ``PREFIXnnnn-dr`` with a differential snapshot ``PREFIXnnnn-dr-pit``."""

    def __init__(self, src: NodeProc, dst: NodeProc, count: int, size: int | str, *, prefix: str = "f",
                 journal_limit: str = "256MiB", workers: int = 8) -> None:
        self.src, self.dst, self.count, self.size, self.prefix = src, dst, count, size, prefix
        self.journal_limit, self.workers = journal_limit, workers
        self.volumes = [f"{prefix}{i:04d}" for i in range(count)]
        self._local = threading.local()

    def api(self, proc: NodeProc) -> RemoteNode:
        """A client of ``proc`` for this thread (one keep-alive connection is not shared)."""
        clients = self._local.__dict__.setdefault("clients", {})
        if proc.api not in clients:
            clients[proc.api] = RemoteNode(proc.api, proc.token, timeout=120)
        return clients[proc.api]

    def each(self, fn: Callable[[str], object]) -> list:
        """``fn(volume)`` for every volume, ``workers`` at a time."""
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(fn, self.volumes))

    def create(self) -> None:
        def one(v: str) -> None:
            src, dst = self.api(self.src), self.api(self.dst)
            src.create_volume(v, self.size)
            dst.create_volume(f"{v}-dr", self.size)
            dst.create_snapshot(f"{v}-dr-pit", f"{v}-dr", "differential")
            src.replication.create(f"{v}-aim", v, f"{self.dst.aim}/{v}-dr", self.dst.token, self.journal_limit)
        self.each(one)

    def sets(self) -> dict[str, dict]:
        """Every set of the fleet as the source reports it (one call)."""
        ours = {f"{v}-aim" for v in self.volumes}
        return {s["name"]: s for s in self.api(self.src).replication.list() if s["name"] in ours}

    def wait(self, done: Callable[[dict], bool], what: str, timeout: float = 300) -> dict[str, dict]:
        """Until ``done(status)`` holds for every set; says which did not."""
        deadline = time.monotonic() + timeout
        while True:
            sets = self.sets()
            missing = [n for n, s in sets.items() if not done(s)] + [f"{v}-aim" for v in self.volumes
                                                                      if f"{v}-aim" not in sets]
            if not missing:
                return sets
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} set(s) not {what} within {timeout:.0f}s, e.g. "
                                     f"{[sets.get(n) for n in missing[:3]]}")
            time.sleep(0.2)

    def caught_up(self, timeout: float = 300) -> dict[str, dict]:
        return self.wait(lambda s: s["state"] == "replicating" and s["acked_seq"] == s["last_seq"],
                         "caught up", timeout)

    def markers(self, volumes: list[str], label: str, timeout: float = 120) -> list[dict]:
        """A marker on each of ``volumes``' sets, issued together; their results (polled in one list)."""
        src = self.api(self.src)
        issued = {src.replication.issue_marker(f"{v}-aim", f"{v}-dr-pit", label)["id"] for v in volumes}
        deadline = time.monotonic() + timeout
        while True:
            got = [m for m in src.replication.markers(limit=10000) if m["id"] in issued]
            if all(m["state"] != "issued" for m in got) and len(got) == len(issued):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"markers still issued after {timeout:.0f}s: "
                                     f"{[m for m in got if m['state'] == 'issued'][:3]}")
            time.sleep(0.1)


def threads(pid: int) -> int:
    return int(_status(pid)["Threads"])


def rss_mib(pid: int, peak: bool = False) -> float:
    """Resident memory now (or its peak, VmHWM), MiB."""
    return int(_status(pid)["VmHWM" if peak else "VmRSS"].split()[0]) / 1024


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
