"""A virtual volume: a sparse file of fixed size and the one write path every write takes.

Everything that must see a write before it lands (dirty bitmaps, copy-on-write points in time,
complete-image increments in progress, the AIM journal) registers as a :class:`WriteObserver`.
:meth:`Volume._mutate` calls them in order under the volume lock, then applies the batch, so a
consumer never misses a write and a barrier is one lock.
"""

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import Conflict, InvalidInput
from .fsutil import copy_range, punch_hole


@dataclass(slots=True)
class WriteIntent:
    """A write about to land: its byte range and the blocks it touches."""

    offset: int
    length: int
    first: int
    last: int
    data: bytes | memoryview | None = None  # valid only during the call; None: zeroes, or a copy from ``source``
    source: "Volume | None" = None


class WriteObserver(Protocol):
    """Sees every write, in batches: a batch is several writes landing in order under one lock
    acquisition (an NBD client's queued requests, a stream of replicated entries), so that an
    observer pays its system calls once per batch (the AIM journal appends a batch in one
    ``pwritev``; a point in time preserves a batch's blocks with one ``fdatasync``)."""

    name: str
    kind: str  # what the operator calls it: "snapshot", "AIM set"

    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        """Called under the volume lock before the batch lands; may raise to refuse it."""

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        """Called under the volume lock once the batch has landed (not if it failed)."""

    def write_failed(self, batch: Sequence[WriteIntent]) -> None:
        """Called under the volume lock when the batch did not land (the disk is full, an IO
        error) after ``before_write`` accepted it: what must never be acted on is taken back
        (the AIM journal drops the entries; a bitmap may keep its bits: over-reporting is safe)."""

    def flush(self) -> None:
        """Make whatever ``before_write`` recorded durable (called before the volume's flush)."""


@dataclass
class IOStats:
    reads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    flushes: int = 0


@dataclass
class Volume:
    name: str
    path: str
    size: int
    block_size: int
    role: str = "volume"  # "volume", or "snapshot" for a complete-image snapshot volume
    replica_of: str | None = None  # set while an AIM set replicates into this volume: hosts may not write
    fence: str | None = None  # why host writes are refused for a while (a switchover draining it)
    observers: list[WriteObserver] = field(default_factory=list)
    stats: IOStats = field(default_factory=IOStats)

    def __post_init__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR)
        self.lock = threading.RLock()

    @property
    def nblocks(self) -> int:
        return (self.size + self.block_size - 1) // self.block_size

    @property
    def host_writable(self) -> bool:
        return self.role == "volume" and not self.replica_of and not self.fence

    def observed_by(self, kind: str) -> list[str]:
        """The names of what observes this volume of one kind ("snapshot", "AIM set"): the
        relationships and sets of this volume, without a scan of every one of the node's."""
        return sorted(o.name for o in self.observers if o.kind == kind)

    def check_range(self, offset: int, length: int) -> None:
        check_range(self.name, self.size, offset, length)

    def check_host_write(self, offset: int, length: int) -> None:
        """Refuse a host write before anything is written: a snapshot volume, a replica, a fenced
        volume, or out of range."""
        if self.fence:
            raise Conflict(f"volume {self.name!r} refuses writes: {self.fence}")
        if self.replica_of:
            raise Conflict(f"volume {self.name!r} is the destination of AIM set {self.replica_of!r}: "
                           "only replication writes to it")
        check_host_write(self.name, self.size, self.role, offset, length)

    def apply_write(self, offset: int, data: bytes | memoryview) -> None:
        """A write that is not a host's (replication, journal replay): same path, no host checks."""
        self.apply_writes([(offset, data)])

    def apply_writes(self, writes: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """Several such writes landing in order, as one batch."""
        self._land(self._data_intents(writes))

    def apply_zeroes(self, offset: int, length: int) -> None:
        self._mutate([self._intent(offset, length)], lambda: punch_hole(self.fd, offset, length))

    def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        data = pread_all(self.fd, length, offset)
        self.stats.reads += 1
        self.stats.bytes_read += length
        return data

    def read_into(self, offset: int, view: memoryview) -> None:
        """:meth:`read` into the caller's buffer (a server reusing one: a fresh ``bytes`` per
        large read costs page faults on memory the allocator just gave back)."""
        self.check_range(offset, len(view))
        pread_into(self.fd, view, offset)
        self.stats.reads += 1
        self.stats.bytes_read += len(view)

    def write(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        """A host write. With ``fua`` it is durable when this returns."""
        self.write_many([(offset, data)], fua=fua)

    def write_many(self, writes: Sequence[tuple[int, bytes | memoryview]], *, fua: bool = False) -> None:
        """Host writes landing in order as one batch; all are checked before any lands."""
        self._land(self._data_intents(writes), host=True)
        if fua:
            self.flush()

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        self.check_host_write(offset, length)
        self._mutate([self._intent(offset, length)], lambda: punch_hole(self.fd, offset, length), host=True)
        if fua:
            self.flush()

    def copy_in(self, source: "Volume", offset: int, length: int) -> None:
        """Copy a range of ``source`` to the same offsets here, through this volume's write path."""
        self._mutate([self._intent(offset, length, source=source)],
                     lambda: copy_range(source.fd, self.fd, offset, length))

    def flush(self) -> None:
        with self.lock:
            observers = list(self.observers)
        for observer in observers:
            observer.flush()
        os.fdatasync(self.fd)
        self.stats.flushes += 1

    def close(self) -> None:
        os.close(self.fd)

    def _intent(self, offset: int, length: int, **kw: object) -> WriteIntent:
        self.check_range(offset, length)
        last = (offset + length - 1) // self.block_size if length else offset // self.block_size
        return WriteIntent(offset, length, offset // self.block_size, last, **kw)  # type: ignore[arg-type]

    def _data_intents(self, writes: Sequence[tuple[int, bytes | memoryview]]) -> list[WriteIntent]:
        """The intents of a batch of writes, every range checked (the hot path: no call per write)."""
        bs, size, batch = self.block_size, self.size, []
        for offset, data in writes:
            n = len(data)
            if offset < 0 or offset + n > size:
                self.check_range(offset, n)  # raises the reason
            if n:
                batch.append(WriteIntent(offset, n, offset // bs, (offset + n - 1) // bs, data))
        return batch

    def _land(self, batch: list[WriteIntent], host: bool = False) -> None:
        def apply() -> None:
            fd = self.fd
            for intent in batch:
                pwrite_all(fd, intent.data, intent.offset)  # type: ignore[arg-type]
        self._mutate(batch, apply, host)

    def _mutate(self, batch: list[WriteIntent], apply, host: bool = False) -> None:
        """The one write path: observers see the batch (zero-length writes left out), then it lands.
        A ``host`` write is refused under the lock, so that a fence (or a promotion's end) set under
        it is exact: no host write lands after the lock released a switchover's final marker."""
        batch = [intent for intent in batch if intent.length]
        if not batch:
            return
        nbytes = 0
        for intent in batch:
            nbytes += intent.length
        with self.lock:
            if host and not self.host_writable:
                self.check_host_write(0, 0)  # raises the reason
            seen = []
            try:
                for observer in self.observers:
                    observer.before_write(batch)
                    seen.append(observer)
                apply()
            except BaseException:
                for observer in seen:
                    observer.write_failed(batch)
                raise
            for observer in self.observers:
                observer.after_write(batch)
        self.stats.writes += len(batch)
        self.stats.bytes_written += nbytes


@contextlib.contextmanager
def barrier(volumes: Iterable["Volume"]) -> Iterator[None]:
    """No write lands on any of ``volumes`` inside: their locks, always taken in name order so
    that two barriers over overlapping volumes cannot deadlock (snapshot sets, group markers)."""
    with contextlib.ExitStack() as stack:
        for vol in sorted({v.name: v for v in volumes}.values(), key=lambda v: v.name):
            stack.enter_context(vol.lock)
        yield


def check_range(name: str, size: int, offset: int, length: int) -> None:
    """The one range check, shared by local volumes and remote clients (same words everywhere)."""
    if offset < 0 or length < 0:
        raise InvalidInput(f"volume {name!r}: offset and length must not be negative")
    if offset + length > size:
        raise InvalidInput(f"volume {name!r}: range {offset}+{length} is beyond its size of {size} bytes")


def check_host_write(name: str, size: int, role: str, offset: int, length: int) -> None:
    if role != "volume":
        raise Conflict(f"{name!r} is a complete-image snapshot volume: only its increments write to it")
    check_range(name, size, offset, length)


def pread_all(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:  # short reads happen on signals and at EOF of a shrunk file
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data + bytes(length - len(data))
        data += more
    return data


def pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``offset`` (zeros past the end of a shrunk file)."""
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            view[:] = bytes(len(view))
            return
        view, offset = view[n:], offset + n


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    n = os.pwrite(fd, data, offset)
    if n < len(data):  # short writes are rare (a signal, a nearly full disk): finish the rest
        view = memoryview(data)[n:]
        offset += n
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n


def read_chunks(read: Callable[[int, int], bytes], offset: int, length: int,
                chunk: int = 1 << 20) -> Iterator[bytes]:
    """Stream a long read in bounded pieces so memory does not grow with the range."""
    end = offset + length
    while offset < end:
        n = min(chunk, end - offset)
        yield read(offset, n)
        offset += n
