"""A node's access: its tokens and its audit trail (the ``node.access`` methods of the typed
interface, over the control API or on a local root)."""

from __future__ import annotations

import os

from ..storage.names import Clock
from .audit import AuditLog
from .tokens import Tokens


class Access:
    def __init__(self, root: str, clock: Clock) -> None:
        self.tokens = Tokens(os.path.join(root, "tokens.json"), clock)
        self.log = AuditLog(os.path.join(root, "audit.log"))

    def create_token(self, name: str, role: str) -> dict:
        return self.tokens.create(name, role)

    def list_tokens(self) -> list[dict]:
        return self.tokens.list()

    def revoke_token(self, name: str) -> None:
        self.tokens.revoke(name)

    def audit(self, since: str | None = None, limit: int = 1000) -> list[dict]:
        return self.log.read(since, limit)
