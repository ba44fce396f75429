"""The demo's write workload and its quiesce control.

A hot-spot workload writes to the source volumes through NBD, the way a host would. The policies'
quiesce hooks (``aimsnap demo-quiesce freeze|thaw VOLUME…``) reach it over a Unix socket: a freeze
waits for the write in flight, pauses the named volumes and records what they hold (a SHA-256 read
back through NBD). A marker issued while a volume is frozen must make a destination point in time
with exactly that content; the demo checks every one of them against these records.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import read_chunks
from engine.client.nbd import NbdClient

CONTROL_ENV = "AIMSNAP_DEMO_CONTROL"
SECTOR = 4096


@dataclass
class Quiet:
    """One freeze of one volume: the content it held from ``frozen_at`` to ``thawed_at``."""

    volume: str
    frozen_at: float
    sha256: str
    thawed_at: float | None = None

    def covers(self, t: float) -> bool:
        return self.frozen_at <= t and (self.thawed_at is None or t <= self.thawed_at)


@dataclass
class VolumeLoad:
    name: str
    size: int
    writer: NbdClient
    reader: NbdClient
    hot: list[int]
    frozen: int = 0
    writes: int = 0
    bytes_written: int = 0
    changed: set[int] = field(default_factory=set)  # 4 KiB sectors written since the last freeze
    unique: list[int] = field(default_factory=list)  # changed bytes per interval between freezes


class Workload:
    """Writes at ``rate`` writes per second across the volumes until stopped: 95 % are 4 KiB
    rewrites of 1 % of each volume (the hot spot a database's log and indexes make), the rest
    4-64 KiB anywhere."""

    def __init__(self, nbd: str, volumes: dict[str, int], rate: float, seed: int,
                 static: frozenset[str] = frozenset()) -> None:
        self.rng = random.Random(seed)
        self.static = static  # volumes only frozen and recorded, never written (a file system)
        self.rate = rate
        self.lock = threading.Lock()
        self.volumes: dict[str, VolumeLoad] = {}
        for name, size in volumes.items():
            sectors = size // SECTOR
            hot = self.rng.sample(range(sectors), max(4, sectors // 100))
            self.volumes[name] = VolumeLoad(name, size, NbdClient(nbd, name), NbdClient(nbd, name), hot)
        self.quiets: list[Quiet] = []
        self.writing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- writing ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.writing.set()
        self._thread = threading.Thread(target=self._write_loop, name="demo-workload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.writing.clear()
        if self._thread:
            self._thread.join()

    def _one_write(self, v: VolumeLoad) -> None:
        sectors = v.size // SECTOR
        if self.rng.random() < 0.95:
            first, count = self.rng.choice(v.hot), 1
        else:
            count = self.rng.choice((1, 2, 4, 16))
            first = self.rng.randrange(sectors - count + 1)
        error, _ = v.writer.write(first * SECTOR, os.urandom(count * SECTOR))
        if error:
            raise OSError(error, f"NBD write to {v.name} failed")
        v.writes += 1
        v.bytes_written += count * SECTOR
        v.changed.update(range(first, first + count))

    def _write_loop(self) -> None:
        names = [n for n in self.volumes if n not in self.static]
        start, done = time.monotonic(), 0
        while self.writing.is_set():
            v = self.volumes[self.rng.choice(names)]
            with self.lock:
                if not v.frozen:
                    self._one_write(v)
            done += 1
            ahead = start + done / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    # -- quiesce ------------------------------------------------------------------------------------------
    def freeze(self, names: list[str]) -> None:
        with self.lock:  # taken between writes: nothing is in flight once we hold it
            for name in names:
                v = self._volume(name)
                v.frozen += 1
                if v.frozen == 1:
                    v.unique.append(len(v.changed) * SECTOR)
                    v.changed.clear()
                now = time.time()
                self.quiets.append(Quiet(name, now, self._digest(v)))

    def thaw(self, names: list[str]) -> None:
        with self.lock:
            now = time.time()
            for name in names:
                v = self._volume(name)
                if v.frozen == 0:
                    raise ValueError(f"volume {name} is not frozen")
                v.frozen -= 1
                quiet = next(q for q in reversed(self.quiets) if q.volume == name and q.thawed_at is None)
                quiet.thawed_at = now

    def _volume(self, name: str) -> VolumeLoad:
        if name not in self.volumes:
            raise ValueError(f"the demo writes no volume named {name!r}")
        return self.volumes[name]

    @staticmethod
    def _digest(v: VolumeLoad) -> str:
        def read(offset: int, length: int) -> bytes:
            error, data = v.reader.read(offset, length)
            if error:
                raise OSError(error, f"NBD read of {v.name} failed")
            return data
        return digest(read, v.size)

    def content_at(self, volume: str, t: float) -> str | None:
        """The recorded content of ``volume`` at time ``t``, if it was frozen then."""
        for q in self.quiets:
            if q.volume == volume and q.covers(t):
                return q.sha256
        return None

    def close(self) -> None:
        for v in self.volumes.values():
            v.writer.close()
            v.reader.close()

    def counts(self) -> Counter:
        c: Counter = Counter()
        for v in self.volumes.values():
            c["writes"] += v.writes
            c["bytes"] += v.bytes_written
        return c


def digest(read: Callable[[int, int], bytes], size: int) -> str:
    """SHA-256 of ``size`` bytes read in bounded pieces: a source at its freeze, a destination point."""
    h = hashlib.sha256()
    for chunk in read_chunks(read, 0, size, 4 << 20):
        h.update(chunk)
    return h.hexdigest()


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """The hooks' way in: one JSON line per request, one JSON line back."""

    daemon_threads = True

    def __init__(self, path: str, workload: Workload) -> None:
        self.workload = workload
        super().__init__(path, _Handler)
        threading.Thread(target=self.serve_forever, name="demo-control", daemon=True).start()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        try:
            req = json.loads(self.rfile.readline())
            op = {"freeze": self.server.workload.freeze, "thaw": self.server.workload.thaw}[req["op"]]  # type: ignore[attr-defined]
            op(list(req["volumes"]))
            reply = {"ok": True}
        except (ValueError, KeyError, TypeError, OSError) as e:
            reply = {"ok": False, "error": str(e)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


def request(op: str, volumes: list[str], path: str | None = None, timeout: float = 60) -> None:
    """What ``aimsnap demo-quiesce`` does: ask the running demo to freeze or thaw volumes."""
    path = path or os.environ.get(CONTROL_ENV)
    if not path:
        raise RuntimeError(f"${CONTROL_ENV} is not set: demo-quiesce only works under `aimsnap demo`")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"op": op, "volumes": volumes}).encode() + b"\n")
        reply = json.loads(s.makefile().readline() or "{}")
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error") or "no answer from the demo")
