"""API tokens made at a node, kept hashed: ``ROOT/tokens.json`` holds each token's name, role,
SHA-256 and creation time, never the token (printed once, when made). A token is 32 random bytes,
so a plain hash cannot be searched back; no slow key derivation is needed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading

from ..errors import AlreadyExists, InvalidInput, NotFound
from ..storage.fsutil import atomic_write
from ..storage.names import Clock, iso
from .roles import NODE_TOKEN, ROLES


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, path: str, clock: Clock) -> None:
        self.path, self.clock = path, clock
        self.lock = threading.Lock()  # a leaf lock (engine.node's lock order, level 4)
        self.rows: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                self.rows = json.load(f)

    def create(self, name: str, role: str) -> dict:
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if name == NODE_TOKEN:
            raise InvalidInput(f"{NODE_TOKEN!r} is the node's own token file's name: choose another")
        token = secrets.token_urlsafe(32)
        with self.lock:
            if name in self.rows:
                raise AlreadyExists(f"token {name!r} exists (revoke it first)")
            self.rows[name] = {"role": role, "sha256": digest(token), "created_at": iso(self.clock())}
            self._save()
        return {"name": name, "role": role, "token": token}

    def list(self) -> list[dict]:
        with self.lock:
            return [{"name": n, "role": r["role"], "created_at": r["created_at"]} for n, r in sorted(self.rows.items())]

    def revoke(self, name: str) -> None:
        with self.lock:
            if self.rows.pop(name, None) is None:
                raise NotFound(f"no token {name!r}" + (" (the node's own token file is changed on the node)"
                                                       if name == NODE_TOKEN else ""))
            self._save()

    def lookup(self, token: str) -> tuple[str, str] | None:
        """(name, role) of a token made here, or None."""
        d = digest(token)
        with self.lock:
            for name, row in self.rows.items():
                if hmac.compare_digest(row["sha256"], d):
                    return name, row["role"]
        return None

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self.rows, indent=1, sort_keys=True).encode())
