"""An AIM set at its source: the record, the write-path observer, and the sender under its
supervisor, put together; and its status, as ``aim status`` and ``/metrics`` show it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..net import tls as tlsctx
from ..net.reactor import Reactor
from ..storage.bitmap import BlockBitmap
from ..storage.meta import Meta
from ..storage.volume import Volume
from . import wire
from .journal import Journal
from .observer import JournalObserver
from .sender import STREAM_TIMEOUT, Sender
from .state import Record, State
from .supervisor import EXPECTED, Supervisor

if TYPE_CHECKING:
    from .markers import Markers


class AimSet:
    def __init__(self, record: Record, volume: Volume, directory: str, meta: Meta, markers: Markers, *,
                 reactor: Reactor, connect: wire.Connector = wire.connect,
                 delay: Callable[[float], float] | None = None, stream_timeout: float = STREAM_TIMEOUT) -> None:
        self.connector = connect
        self.record, self.volume, self.dir, self.meta, self.markers = record, volume, directory, meta, markers
        self.name = record.name
        with open(os.path.join(directory, "dest.token")) as f:
            self.token = f.read().strip()
        self.tls = tlsctx.client_tls(os.path.join(directory, "dest-ca.pem")) if record.tls else None
        self.journal = Journal(os.path.join(directory, "journal"))
        self.journal_end = self.journal.next_seq  # what the disk kept: a marker at or past it was lost
        self.lost_markers: list[int] = []  # such markers, until a handshake says whether they were applied
        # never reuse a number the destination acknowledged or a resync started from (a power cut
        # can take back a journal tail the destination had already applied)
        self.journal.skip_to(max(record.acked_seq, record.checkpoint_seq, (record.resync_from or 1) - 1) + 1)
        self.dirty = BlockBitmap(os.path.join(directory, "dirty.bm"), volume.nblocks)
        self.observer = JournalObserver(record, volume, self.journal, self.dirty, meta, self._overflowed)
        self.state = State.FENCED if record.fenced else State.PAUSED if record.paused else State.DISCONNECTED
        self.closing = False
        self.local_port: int | None = None  # this node's AIM port, announced to the destination
        self.sender = Sender(self, self._connect, reactor, timeout=stream_timeout)
        self.supervisor = Supervisor(f"aim-send-{self.name}", self.sender.step, reactor, delay=delay,
                                     expected=(*EXPECTED, wire.WireError, wire.DestinationError))

    def _connect(self) -> wire.Connection:
        return wire.Connection(self.connector(self.record.dest_host, self.record.dest_port, tls=self.tls))

    def _overflowed(self, failed_markers: list[int]) -> None:
        for marker_id in failed_markers:
            self.markers.result(marker_id, {"state": "failed", "error": "the journal limit was reached before the "
                                            "marker reached the destination (the set resynchronises)"})
        self.sender.drop()

    # -- running -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.supervisor.start()

    def stop(self) -> None:
        self.closing = True
        self.sender.drop()
        self.supervisor.stop()

    def set_paused(self, paused: bool) -> None:
        self.record.paused = paused
        self.record.save(self.meta)
        if paused:
            self.sender.drop()
        self.supervisor.wake()

    def close(self) -> None:
        self.stop()
        self.journal.close()
        self.dirty.close()

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict:
        rec, backlog = self.record, self.observer.backlog
        last = self.markers.last_applied(self.name)
        fenced = rec.fence
        return {"name": self.name, "role": "source", "state": self.state.value, "source": self.volume.name,
                "tls": self.tls is not None, "generation": rec.generation, "fenced": fenced,
                "switchover": rec.pending_switchover,
                "destination": f"{rec.dest_host}:{rec.dest_port}/{rec.dest_volume}",
                "overflowed": rec.overflowed, "dirty_blocks": self.dirty.count(),
                "queued_entries": max(backlog.entries, 0), "queued_bytes": max(backlog.bytes, 0),
                "lag_seconds": round(backlog.lag_seconds(time.time_ns()), 3), "bytes_written": rec.bytes_written,
                "bytes_sent": rec.bytes_sent, "acked_seq": rec.acked_seq, "last_seq": self.journal.next_seq - 1,
                "journal_limit": rec.journal_limit, "last_applied_marker": last, **self.supervisor.status(),
                **({"last_error": fenced["message"]} if fenced else {})}
