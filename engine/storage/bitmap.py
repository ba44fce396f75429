"""Persistent block bitmaps: dirty-block tracking and point-in-time presence maps.

A bit is written to its file (``pwrite``) before the data it describes, so a killed process
leaves a bitmap that may over-report but never under-report. Bits are cleared only by
:meth:`BlockBitmap.save`, an atomic replace issued after the data the bits described is durable.
"""

import os
import re
import threading
from collections.abc import Iterator

from .fsutil import atomic_write

_NONZERO = re.compile(rb"[^\x00]+")


class BlockBitmap:
    """One bit per block, mirrored to a file."""

    def __init__(self, path: str, nblocks: int, bits: bytearray | None = None) -> None:
        self.path = path
        self.nblocks = nblocks
        nbytes = (nblocks + 7) // 8
        if bits is None:
            with open(path, "rb") as f:
                bits = bytearray(f.read())
            self.bits = bits
            if len(bits) != nbytes:  # torn or foreign file: trust nothing, report everything
                self.bits = bytearray(b"\xff" * nbytes)
                self.save()
        else:
            self.bits = bits
        self.held: bytearray | None = None  # bits handed out by take(), still in the file
        self._fd_lock = threading.Lock()  # save() swaps the descriptor that sync() may be syncing
        self.fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, path: str, nblocks: int, ranges: Iterator[tuple[int, int]] = iter(())) -> "BlockBitmap":
        """A new bitmap with the blocks in ``ranges`` (block index ``first..last``) set, made
        durable before it is returned."""
        bits = bytearray((nblocks + 7) // 8)
        for first, last in ranges:
            for b in range(first, last + 1):
                bits[b >> 3] |= 1 << (b & 7)
        atomic_write(path, bytes(bits))
        return cls(path, nblocks, bits)

    def close(self) -> None:
        with self._fd_lock:
            os.close(self.fd)

    def test(self, block: int) -> bool:
        return bool(self.bits[block >> 3] & (1 << (block & 7)))

    def mark(self, first: int, last: int) -> bool:
        """Set blocks ``first..last``; write the changed bytes to the file. True if any bit
        was newly set."""
        bits = self.bits
        changed = False
        for b in range(first, last + 1):
            mask = 1 << (b & 7)
            if not bits[b >> 3] & mask:
                bits[b >> 3] |= mask
                changed = True
        if changed:
            lo, hi = first >> 3, (last >> 3) + 1
            chunk = bytes(bits[lo:hi])
            if self.held is not None:  # keep the taken bits in the file until save()
                chunk = bytes(a | b for a, b in zip(chunk, self.held[lo:hi]))
            os.pwrite(self.fd, chunk, lo)
        return changed

    def take(self) -> bytearray:
        """Return the set bits and clear them in memory. The file keeps them until :meth:`save`,
        so a crash before the consumer has made use of them reports them again."""
        taken = self.bits[:]
        self.held = taken if self.held is None else bytearray(a | b for a, b in zip(self.held, taken))
        self.bits[:] = bytes(len(self.bits))
        return taken

    def untake(self, taken: bytearray) -> None:
        """Give taken bits back (their consumer failed before using them); the file still has them."""
        for i, byte in enumerate(taken):
            if byte:
                self.bits[i] |= byte

    def sync(self) -> None:
        with self._fd_lock:
            os.fdatasync(self.fd)

    def save(self) -> None:
        """Atomically replace the file with the in-memory bits (the only way bits are cleared)."""
        atomic_write(self.path, bytes(self.bits))
        self.held = None
        if hasattr(self, "fd"):
            with self._fd_lock:
                os.close(self.fd)
                self.fd = os.open(self.path, os.O_RDWR)

    def count(self) -> int:
        return count_bits(self.bits)

    def set_all(self) -> None:
        self.bits[:] = b"\xff" * len(self.bits)
        self.save()


def count_bits(bits: bytes | bytearray) -> int:
    return int.from_bytes(bits, "little").bit_count()


def runs(bits: bytes | bytearray, nblocks: int, max_run: int) -> Iterator[tuple[int, int]]:
    """Yield ``(first, count)`` runs of consecutive set bits, at most ``max_run`` long, skipping
    zero bytes at C speed so that a sparse bitmap of a large volume costs little."""
    for m in _NONZERO.finditer(bits):
        start = None
        for byte_index in range(m.start(), m.end()):
            byte = bits[byte_index]
            for bit in range(8):
                b = byte_index * 8 + bit
                if b >= nblocks:
                    break
                if byte & (1 << bit):
                    if start is None:
                        start = b
                    elif b - start >= max_run:
                        yield start, b - start
                        start = b
                elif start is not None:
                    yield start, b - start
                    start = None
        if start is not None:
            end = min(m.end() * 8, nblocks)
            yield start, end - start


class ChangeMap:
    """A write observer that marks every block written in a :class:`BlockBitmap`: the blocks a
    promoted AIM destination changed since its promotion, which a failback must send back."""

    def __init__(self, name: str, kind: str, bitmap: BlockBitmap) -> None:
        self.name, self.kind, self.bitmap = name, kind, bitmap

    def before_write(self, batch) -> None:
        for intent in batch:
            self.bitmap.mark(intent.first, intent.last)

    def after_write(self, batch) -> None:
        pass

    def write_failed(self, batch) -> None:
        pass  # a bit too many: a failback sends a block that did not change, no harm

    def flush(self) -> None:
        self.bitmap.sync()


def union(*maps: bytes | bytearray) -> bytearray:
    """The bits set in any of ``maps`` (of one length)."""
    out = 0
    for m in maps:
        out |= int.from_bytes(m, "little")
    return bytearray(out.to_bytes(len(maps[0]), "little"))
