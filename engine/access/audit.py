"""The audit trail: one JSON line per state-changing request to the control API (who — the
token's name —, its role, what, when, from which address, the result), appended to
``ROOT/audit.log`` and synced before the answer leaves, so an answered request is on record.
The log turns over at 16 MiB into ``audit.log.1`` … ``.4`` (the oldest is dropped): bounded,
whatever the uptime. A body is never recorded whole (it may hold a token): only the names the
caller picks (``request``). Every line has the shape :func:`entry` gives it."""

from __future__ import annotations

import json
import os
import threading

ROTATE_AT = 16 << 20
KEEP = 4
REFUSALS_PER_MINUTE = 20  # per token: more are counted in one line, so that a token refused over and
# over (a read token POSTing in a loop) cannot turn the trail over and push real changes out of it


def entry(at: str, token: str, role: str, remote: str | None, method: str, path: str, op: str | None,
          status: int | str, request: dict | None = None, error: str | None = None) -> dict:
    """One line of the trail (an API request, a peer's role request), the same keys for all."""
    line = {"at": at, "token": token, "role": role, "remote": remote, "method": method, "path": path, "op": op,
            "status": status}
    if request:
        line["request"] = request
    if error is not None:
        line["error"] = error
    return line


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()  # a leaf lock (engine.node's lock order, level 4)
        self.refusals: dict[str, tuple[str, int]] = {}  # token -> (the minute, refusals recorded in it)
        self.suppressed: dict[str, int] = {}  # token -> refusals not recorded since its last line
        if os.path.exists(path):
            os.chmod(path, 0o600)

    def record(self, line: dict) -> None:
        """Append ``line`` (an :func:`entry`); a 403 beyond :data:`REFUSALS_PER_MINUTE` for its
        token is counted instead, and the count is written with that token's next recorded line."""
        token, minute = str(line.get("token")), str(line.get("at", ""))[:16]
        with self.lock:
            if line.get("status") == 403:
                seen_minute, n = self.refusals.get(token, (minute, 0))
                n = n + 1 if seen_minute == minute else 1
                self.refusals[token] = (minute, n)
                if n > REFUSALS_PER_MINUTE:
                    self.suppressed[token] = self.suppressed.get(token, 0) + 1
                    return
            if self.suppressed.get(token):
                line = {**line, "refusals_not_recorded": self.suppressed.pop(token)}
            self._append(line)

    def _append(self, line: dict) -> None:
        raw = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
        if os.path.exists(self.path) and os.path.getsize(self.path) + len(raw) > ROTATE_AT:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, raw)
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
                            line = json.loads(raw)
                        except ValueError:
                            continue  # a line torn by a power cut: the rest is still read
                        if since is None or line.get("at", "") >= since:
                            out.append(line)
            for token, n in self.suppressed.items():  # counted, not yet written with a line of theirs
                out.append({**entry(self.refusals[token][0], token, "", None, "", "", None, 403),
                            "refusals_not_recorded": n})
        return out[-limit:]
