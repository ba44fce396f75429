"""The audit trail: one JSON line per state-changing request to the control API (who — the
token's name —, its role, what, when, from which address, the result), appended to
``ROOT/audit.log`` and synced before the answer leaves, so an answered request is on record.
The log turns over at 16 MiB into ``audit.log.1`` … ``.4`` (the oldest is dropped): bounded,
whatever the uptime. Bodies are never recorded (they may hold a token)."""

from __future__ import annotations

import json
import os
import threading

ROTATE_AT = 16 << 20
KEEP = 4


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()  # a leaf lock (engine.node's lock order, level 4)

    def record(self, entry: dict) -> None:
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        with self.lock:
            if os.path.exists(self.path) and os.path.getsize(self.path) + len(line) > ROTATE_AT:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        for i in range(KEEP - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")

    def read(self, since: str | None = None, limit: int = 1000) -> list[dict]:
        """The newest ``limit`` entries at or after ``since`` (an ISO time), oldest first."""
        out: list[dict] = []
        with self.lock:
            files = [f"{self.path}.{i}" for i in range(KEEP, 0, -1)] + [self.path]
            for path in files:
                if not os.path.exists(path):
                    continue
                with open(path, "rb") as f:
                    for raw in f:
                        try:
                            entry = json.loads(raw)
                        except ValueError:
                            continue  # a line torn by a power cut: the rest is still read
                        if since is None or entry.get("at", "") >= since:
                            out.append(entry)
        return out[-limit:]
