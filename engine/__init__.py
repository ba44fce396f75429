"""aimsnap's storage engine: volumes, dirty-block tracking, snapshots and snapshot sets.

The engine imports nothing from ``policies`` or ``orchestrator``.
"""

from .errors import AlreadyExists, Conflict, EngineError, InvalidInput, NotFound
from .node import Node, read_chunks
from .units import format_size, parse_size

__all__ = ["AlreadyExists", "Conflict", "EngineError", "InvalidInput", "Node", "NotFound",
           "format_size", "parse_size", "read_chunks"]
