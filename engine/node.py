"""The composition root: a node is its storage, then its replication wired onto it.

Storage (:mod:`engine.storage`) knows nothing of replication; replication (:mod:`engine.aim`)
attaches each AIM set to its source volume as a write observer. The node server
(:mod:`engine.serve`) adds the AIM port's receiver, NBD and the control API around a Node.

Lock order (every path takes them in this order, never the reverse):

0. ``Roles.lock`` (one role change of an AIM set at a time: failover, failback, switchover, and
   the peer's half of them); held across their network calls and while they wait for a stream's
   applier to stop, which never takes it
1. ``Relationship.enable_lock`` (one enable of a snapshot relationship at a time), by name
2. ``Storage.lock`` (what exists: volumes, relationships, sets, AIM sets)
3. ``Volume.lock`` (a volume's write path and observers), several in name order (``barrier``)
3b. ``Clone.lock``: after the volume lock of the volume it observes (an image, or a verify's frozen
   live volume: it copies blocks up as an observer), and before the source volume lock of a point
   it reads its base from (a clone of a point observes nothing, so no path takes them the other way)
4. leaf locks, held for a few statements and never while taking another: ``Meta``'s connection
   lock, a reactor task's and a supervisor's lock, ``Markers.waiters`` and its stamp lock,
   ``GroupBarriers.lock``, the receiver's stream map (``Targets.lock``), the listener's connection
   set, the tokens' and the audit log's locks (``engine.access``)
5. the reactor's lock (its parked sockets and timers) and its pools' own: taken under a level-4
   lock (a supervisor schedules a timer; the write path wakes a sender), never the other way
"""

from collections.abc import Callable

from .access import Access
from .aim import wire
from .aim.replication import Replication
from .aim.sender import STREAM_TIMEOUT
from .storage.names import Clock, utcnow
from .storage.storage import Storage


class Node(Storage):
    """Every volume, snapshot, snapshot set and AIM set under one root."""

    def __init__(self, root: str, *, clock: Clock = utcnow, create: bool = True,
                 connect: wire.Connector = wire.connect, delay: Callable[[float], float] | None = None,
                 stream_timeout: float = STREAM_TIMEOUT) -> None:
        """``connect`` opens a socket to a destination's AIM port and ``delay`` maps the wait
        before a sender's retry to the one taken: tests pass a ``socketpair`` and a recorder.
        ``stream_timeout``: an AIM peer silent this long has gone (``--aim-stream-timeout``)."""
        super().__init__(root, clock=clock, create=create)
        self.access = Access(self.root, clock)
        try:
            self.replication = Replication(self, connect=connect, delay=delay, stream_timeout=stream_timeout)  # AIM sets observe their volumes
            self.replication.load()
        except BaseException:
            super().close()
            raise
        self.opened()

    def close(self) -> None:
        self.replication.close()  # stops and joins the senders (not under the storage lock), detaches the sets
        super().close()

    def volume_info(self, name: str) -> dict:
        return {**super().volume_info(name), "aim_sets": self.volume(name).observed_by("AIM set")}
