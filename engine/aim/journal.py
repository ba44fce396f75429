"""The AIM journal: an ordered, checksummed log of one source volume's writes, on disk.

Segments ``<first-seq>.seg`` roll over at :data:`SEGMENT_BYTES`. Opening scans every segment and
truncates a torn tail (a short or mis-checksummed last entry, or one out of sequence: a write the
host was never told was durable). Segments whose every entry the destination acknowledged are
reclaimed: up to :data:`SPARES` are renamed ``*.spare`` and reused by the next segments, so an
append overwrites blocks the file system has already allocated (and pages still cached) instead
of allocating new ones (measured: half the kernel time per append). A reused file holds old
entries past the new tail; they are out of sequence, so a scan stops before them.

Sequence numbers never go back, not even after a power cut took the unsynced tail: an empty
segment's name still says where the journal goes on (a reset leaves one), and :meth:`skip_to`
moves past numbers the destination or the ledger has already seen.
"""

import errno
import os
import threading
from collections.abc import Iterator, Sequence
from typing import BinaryIO
from dataclasses import dataclass

from . import frames
from ..storage.fsutil import fsync_dir, make_dir

# 16 MiB: a set that writes recycles its own spares after 32 MiB (growing new files at ten sets at
# once halved their throughput, bench/scale.py), and spares hold 32 MiB of disk per set, not 128.
SEGMENT_BYTES = 16 << 20  # a batch may take the last segment slightly past it
IOV_MAX = 1024
SPARES = 2
Entry = tuple[int, int, "bytes | memoryview", int]


@dataclass
class Segment:
    first: int
    last: int  # 0 when empty
    path: str
    size: int
    first_time_ns: int = 0


class Journal:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        make_dir(directory)
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the tail segment, appended to under the volume lock
        self._unsynced: list[int] = []  # earlier segments written since the last sync()
        self._fd_lock = threading.Lock()  # guards opening and closing the two above (not appends)
        self.next_seq = 1
        self.spares = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".spare"))
        self._recover()

    # -- opening ------------------------------------------------------------------------------------
    def _recover(self) -> None:
        names = sorted((int(f.removesuffix(".seg")), f) for f in os.listdir(self.dir) if f.endswith(".seg"))
        for first, name in names:
            path = os.path.join(self.dir, name)
            seg = Segment(first, 0, path, 0)
            good = 0
            for frame, end in _scan(path, first):
                if seg.last == 0:
                    seg.first_time_ns = frame.time_ns
                seg.last, good = frame.seq, end
            if good != os.path.getsize(path):  # torn tail: cut it off
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            seg.size = good
            if seg.last:
                self.segments.append(seg)
                self.next_seq = seg.last + 1
            elif first >= self.next_seq and name == names[-1][1]:
                self.next_seq = first  # an empty tail (after a reset, or a cut): where the numbers go on
            else:
                os.unlink(path)

    # -- writing --------------------------------------------------------------------------------------
    def append(self, ftype: int, offset: int, payload: bytes | memoryview, time_ns: int,
               length: int = -1) -> tuple[int, int]:
        """Append one entry; return its sequence number and size. Durable after :meth:`sync`."""
        return self.append_many([(ftype, offset, payload, length)], time_ns)

    def append_many(self, entries: Sequence[Entry], time_ns: int) -> tuple[int, int]:
        """Append entries (type, offset, payload, length for ZERO) in order, with one ``pwritev``
        per :data:`IOV_MAX` pieces; return the last sequence number and the bytes appended."""
        if not self.segments or self.segments[-1].size >= SEGMENT_BYTES or self._fd is None:
            self._roll(self.next_seq, time_ns)
        seg = self.segments[-1]
        seq = self.next_seq
        iov: list[bytes | memoryview] = []
        sizes: list[int] = []  # bytes per IOV_MAX pieces
        for ftype, offset, payload, length in entries:
            if len(iov) % IOV_MAX == 0:
                sizes.append(0)
            iov += (frames.header(ftype, seq, offset, time_ns, payload, length), payload)
            sizes[-1] += frames.HEADER_SIZE + len(payload)
            seq += 1
        size = 0
        for i, expected in enumerate(sizes):
            pieces = iov[i * IOV_MAX:(i + 1) * IOV_MAX]
            n = os.pwritev(self._fd, pieces, seg.size + size)
            if n != expected:  # a nearly full disk: writing the rest says why (ENOSPC), or finishes
                _pwrite_rest(self._fd, b"".join(pieces)[n:], seg.size + size + n)
            size += expected
        seg.size += size
        if seg.last == 0:
            seg.first_time_ns = time_ns
        seg.last = seq - 1
        self.next_seq = seq
        return seq - 1, size

    def unappend(self, first: int, size: int) -> None:
        """Take back the last append (entries ``first``.. of ``size`` bytes, in the tail segment):
        its data never landed. The first header is zeroed so that a scan after a crash stops there."""
        seg = self.segments[-1]
        seg.size -= size
        os.pwrite(self._fd, bytes(frames.HEADER_SIZE), seg.size)
        self.next_seq = first
        seg.last = first - 1

    def _roll(self, first: int, time_ns: int) -> None:
        with self._fd_lock:
            self._roll_locked(first, time_ns)

    def _roll_locked(self, first: int, time_ns: int) -> None:
        if self._fd is not None:  # made durable by the next sync(), not here on the write path
            self._unsynced.append(self._fd)
        tail = self.segments[-1] if self.segments else None
        if tail and tail.size < SEGMENT_BYTES and (tail.last or tail.first - 1) + 1 == first:
            seg = tail  # reopen the tail after a restart (unless skip_to() moved past it)
        else:
            seg = Segment(first, 0, os.path.join(self.dir, f"{first:020d}.seg"), 0, time_ns)
            self.segments.append(seg)
            if self.spares:
                os.rename(self.spares.pop(), seg.path)
        self._fd = os.open(seg.path, os.O_RDWR | os.O_CREAT, 0o600)
        fsync_dir(self.dir)

    def sync(self) -> None:
        """Make every appended entry durable. Called by the volume's flush without the volume
        lock, so it holds the fd lock: a roll or a reset must not close a descriptor under it."""
        with self._fd_lock:
            while self._unsynced:
                fd = self._unsynced.pop(0)
                os.fdatasync(fd)
                os.close(fd)
            if self._fd is not None:
                os.fdatasync(self._fd)

    # -- reading and reclaiming --------------------------------------------------------------------------
    def read_from(self, seq: int) -> Iterator[tuple[frames.Frame, bytes]]:
        """Entries with sequence >= ``seq``, as (frame, raw bytes) pairs, in order."""
        for seg in list(self.segments):
            if seg.last < seq:
                continue
            for frame, end, raw in _scan(seg.path, seg.first, with_raw=True, limit=seg.size):
                if frame.seq >= seq:
                    yield frame, raw

    def reclaim(self, acked: int) -> int:
        """Reclaim segments fully acknowledged (kept as spares, or deleted); return the bytes of
        entries freed. The tail segment stays open."""
        freed = 0
        while len(self.segments) > 1 and self.segments[0].last <= acked:
            seg = self.segments.pop(0)
            if len(self.spares) < SPARES:
                spare = seg.path.removesuffix(".seg") + ".spare"
                os.rename(seg.path, spare)
                self.spares.append(spare)
            else:
                os.unlink(seg.path)
            freed += seg.size
        if freed:
            fsync_dir(self.dir)
        return freed

    def reset(self, next_seq: int) -> None:
        """Drop every entry (after they were turned into a dirty bitmap); continue at ``next_seq``."""
        with self._fd_lock:
            for fd in self._unsynced:
                os.close(fd)
            self._unsynced = []
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        for seg in self.segments:
            os.unlink(seg.path)
        self.segments = []
        self._mark_empty(next_seq)
        self.next_seq = next_seq

    def skip_to(self, seq: int) -> None:
        """Continue at ``seq`` if it is beyond the end (called at open, before any append): the
        numbers in between were seen elsewhere, and a scan must not find them twice."""
        if seq <= self.next_seq:
            return
        with self._fd_lock:
            self._unsynced += [self._fd] if self._fd is not None else []
            self._fd = None
        self._mark_empty(seq)
        self.next_seq = seq

    def _mark_empty(self, seq: int) -> None:
        """An empty segment named ``seq``, durably: the journal's next number after a restart."""
        path = os.path.join(self.dir, f"{seq:020d}.seg")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        fsync_dir(self.dir)

    def backlog(self, acked: int) -> tuple[int, int, int]:
        """(entries, bytes, time_ns of the oldest) after ``acked``: reads headers only."""
        entries = nbytes = oldest = 0
        for seg in list(self.segments):
            if seg.last <= acked:
                continue
            for seq, time_ns, size in _scan_headers(seg.path, seg.size):
                if seq > acked:
                    entries += 1
                    nbytes += size
                    oldest = oldest or time_ns
        return entries, nbytes, oldest

    def close(self) -> None:
        self.sync()
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _pwrite_rest(fd: int, data: bytes, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)  # raises the disk's error (ENOSPC) where there is one
        if n == 0:
            raise OSError(errno.ENOSPC, "no space left on device (the AIM journal)")
        data, offset = data[n:], offset + n


def _scan_headers(path: str, limit: int):
    """(seq, time_ns, entry size) of each entry, seeking over payloads."""
    with open(path, "rb") as f:
        pos = 0
        while pos < limit:
            head = f.read(frames.HEADER_SIZE)
            if len(head) < frames.HEADER_SIZE:
                return
            ftype, seq, _off, time_ns, length, _crc = frames.parse_header(head)
            size = frames.HEADER_SIZE + frames.payload_length(ftype, length)
            yield seq, time_ns, size
            pos += size
            f.seek(pos)


class Cursor:
    """Reads a journal forward as raw bytes, from a sequence number, remembering where it is.

    A sender ships byte ranges, not entries: frames are self-delimiting and the receiver
    reassembles them, so only the first header of each range is parsed here (for its time)."""

    CHUNK = 4 << 20

    def __init__(self, journal: Journal, seq: int) -> None:
        self.journal, self.seq = journal, seq
        self._seg_first: int | None = None
        self._pos = 0
        self._file = None  # the segment being read, kept open between calls
        self._time: int | None = None  # time_ns of the first entry of the range being read

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def ranges(self, landed_seq: int, tail_first: int, tail_size: int) -> Iterator[tuple[int, int, int, BinaryIO, int, int]]:
        """(first seq, last seq, time_ns of the first, file, offset, count) of what is journaled and
        landed: up to ``landed_seq``, and in the tail segment (first sequence ``tail_first``) up to
        ``tail_size`` bytes, published together by the write path. The caller ships ``count`` bytes
        of ``file`` from ``offset`` (``socket.sendfile``: no copy through Python). A long range comes
        in several pieces; only the last carries its sequence numbers (the others have first = last = 0).
        The caller may stop after any piece: the next call goes on from there."""
        for seg in list(self.journal.segments):
            if seg.last < self.seq or seg.first > landed_seq:
                continue
            if seg.first != self._seg_first or self._file is None:
                self.close()
                self._file = open(seg.path, "rb")
                self._seg_first, self._pos = seg.first, self._offset_of(self._file, seg, self.seq)
                self._time = None
            end, last = (tail_size, landed_seq) if seg.first == tail_first else (seg.size, seg.last)
            if self._pos >= end:
                continue
            f = self._file
            if self._time is None:  # at an entry's start (a caller may stop between two pieces)
                self._time = frames.parse_header(os.pread(f.fileno(), frames.HEADER_SIZE, self._pos))[3]
            while self._pos < end:
                pos, count = self._pos, min(self.CHUNK, end - self._pos)
                self._pos += count
                if self._pos >= end:
                    first_seq, first_time = self.seq, self._time
                    self.seq, self._time = last + 1, None  # before the yield: the caller may stop there
                    yield first_seq, last, first_time, f, pos, count
                else:
                    yield 0, 0, 0, f, pos, count

    @staticmethod
    def _offset_of(f, seg: Segment, seq: int) -> int:
        """Byte offset of entry ``seq`` in a segment (headers only; once per segment opened)."""
        pos = 0
        while pos < seg.size:
            f.seek(pos)
            ftype, s, _off, _t, length, _crc = frames.parse_header(f.read(frames.HEADER_SIZE))
            if s >= seq:
                return pos
            pos += frames.HEADER_SIZE + frames.payload_length(ftype, length)
        return pos


def _scan(path: str, first: int, with_raw: bool = False, limit: int | None = None):
    """Yield valid entries of a segment file (sequence ``first`` on) and the offset after each;
    stop at the first bad or out-of-sequence one (the end, or a reused file's old entries)."""
    with open(path, "rb") as f:
        pos, expected = 0, first
        while limit is None or pos < limit:
            head = f.read(frames.HEADER_SIZE)
            if len(head) < frames.HEADER_SIZE:
                return
            try:
                ftype, seq, *_rest, length, _crc = frames.parse_header(head)
                if seq != expected:
                    return
                payload = f.read(frames.payload_length(ftype, length))
                frame = frames.decode(head, payload)
            except frames.FrameError:
                return
            pos += len(head) + len(payload)
            expected += 1
            if with_raw:
                yield frame, pos, head + payload
            else:
                yield frame, pos
