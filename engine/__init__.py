"""aimsnap's storage engine, in layers (each imports only those below it):

- ``storage/``: volumes, dirty-block tracking, snapshots, points, snapshot sets, metadata
- ``net/``: sockets, receive buffers, the threaded listener, TLS contexts
- ``aim/``: asynchronous IO mirroring (journal, wire, sender, applier, markers, groups)
- ``node``: the composition root (storage, then replication) and ``interface``: the typed
  node interface that the local :class:`Node` and the remote client both satisfy
- ``serve/``: the node server (control API, NBD, the AIM port, metrics)
- ``client/``: the clients of a node's API and NBD exports

The engine imports nothing from ``policies`` or ``orchestrator``.
"""

from .errors import AlreadyExists, Conflict, EngineError, Forbidden, InvalidInput, NotFound
from .node import Node
from .storage.units import format_size, parse_size
from .storage.volume import read_chunks

__all__ = ["AlreadyExists", "Conflict", "EngineError", "Forbidden", "InvalidInput", "Node", "NotFound",
           "format_size", "parse_size", "read_chunks"]
