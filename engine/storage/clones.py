"""Clones: writable volumes over a fixed recovery point, for DR tests (a test failover that leaves
replication, markers and retention running).

A clone is an overlay: the blocks written to it (or copied up before a partial write) live in a
sparse file of its own, a presence map says which; every other block is read from its base, a
point in time (``SNAPSHOT@POINT``: stable, newer points preserve what it needs) or a complete-image
snapshot's image. An image changes at its next increment, so a clone of one is also a write
observer of the image volume: before an increment overwrites a block the clone has not got, the
clone copies it, durably, like a point in time. Creating a clone copies nothing.

Durability: a host's write lands in the clone's file at once, but its presence bit reaches the
map file only at the next flush, after the data is synced, so a crash or a power cut never makes a
block read anything but its base or a write the host made (an unflushed write may be lost, as on
any volatile write cache). Locks: a clone's lock is taken after the image's volume lock (as an
observer) and before a point's source volume lock (reading the base).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import AlreadyExists, Conflict, InvalidInput, NotFound
from .bitmap import BlockBitmap, count_bits
from .fsutil import create_sparse, fsync_dir, punch_hole
from .hosts import Hosts
from .meta import Meta
from .names import Clock, check_name, iso
from .root import Root
from .snapshots import CompleteImage, Differential, preserve, read_pieces
from .volume import Volume, WriteIntent, check_range, pread_all, pwrite_all

BaseRead = Callable[[int, int], bytes]


@dataclass
class Origin:
    """What a clone was made from: ``snapshot`` and ``point`` (None: a complete image)."""
    snapshot: str
    point: str | None

    def __str__(self) -> str:
        return f"{self.snapshot}@{self.point}" if self.point else self.snapshot


class Clone:
    kind = "clone"

    def __init__(self, name: str, origin: Origin, size: int, block_size: int, data_path: str, map_path: str,
                 created_at: str, base_read: BaseRead, observed: Volume | None = None, bytes_written: int = 0) -> None:
        self.name, self.origin, self.size, self.block_size = name, origin, size, block_size
        self.data_path, self.map_path, self.created_at = data_path, map_path, created_at
        self.base_read = base_read
        self.observed = observed  # a volume whose writes it copies up first (an image, a live volume)
        self.bytes_written = bytes_written
        self.fd = os.open(data_path, os.O_RDWR)
        self.present = BlockBitmap(map_path, self.nblocks)
        self.lock = threading.Lock()
        self.closed = False  # deleted (or thawed): a flush of the observed volume may still call in
        self.private = False  # a frozen view (a verify's): it gives up rather than fail a host's write
        self.broken: str | None = None  # why a private view stopped keeping its point
        self.claimed = False  # a destination's verify view: its verify connection has come
        self._unsynced: tuple[int, int] | None = None  # byte range of the map with bits not yet in its file

    @property
    def nblocks(self) -> int:
        return (self.size + self.block_size - 1) // self.block_size

    def info(self) -> dict:
        return {"name": self.name, "from": str(self.origin), "size": self.size, "created_at": self.created_at,
                "bytes_written": self.bytes_written, "blocks_held": count_bits(self.present.bits)}

    # -- reading ------------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        check_range(self.name, self.size, offset, length)
        with self.lock:
            self._check_open()
            return self._read(offset, length)

    def _check_open(self) -> None:
        if self.closed:
            raise NotFound(f"clone {self.name!r} was deleted")

    def _read(self, offset: int, length: int) -> bytes:
        """Runs of blocks from the clone's file or from the base, in order."""
        return read_pieces(offset, length, self.block_size, lambda b: self if self.present.test(b) else None,
                           self._piece)

    def _piece(self, holder: object, offset: int, length: int) -> bytes:
        return pread_all(self.fd, length, offset) if holder is self else self.base_read(offset, length)

    # -- writing (a host's: through NBD or the API) ---------------------------------------------------------
    def write_many(self, writes: Sequence[tuple[int, bytes | memoryview]], fua: bool = False) -> None:
        for offset, data in writes:
            check_range(self.name, self.size, offset, len(data))
        with self.lock:
            self._check_open()
            for offset, data in writes:
                if data:
                    self._copy_up_ends(offset, len(data))
                    pwrite_all(self.fd, data, offset)
                    self._mark(offset, len(data))
        if fua:
            self.flush()

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        check_range(self.name, self.size, offset, length)
        if length:
            with self.lock:
                self._check_open()
                self._copy_up_ends(offset, length)
                punch_hole(self.fd, offset, length)
                self._mark(offset, length)
        if fua:
            self.flush()

    def flush(self) -> None:
        """Data first, then the presence bits that make it visible after a restart. A no-op once
        closed: the observed volume's flush calls its observers outside its lock, so it may come
        just after a delete."""
        with self.lock:
            if not self.closed:
                self._flush_locked()

    def _flush_locked(self) -> None:
        os.fdatasync(self.fd)
        if self._unsynced is not None:
            lo, hi = self._unsynced
            os.pwrite(self.present.fd, bytes(self.present.bits[lo:hi]), lo)
            self.present.sync()
            self._unsynced = None

    def _copy_up_ends(self, offset: int, length: int) -> None:
        """A write that covers a block only in part: the rest of it comes from the base first."""
        bs = self.block_size
        for b in {offset // bs, (offset + length - 1) // bs}:
            start, stop = b * bs, min((b + 1) * bs, self.size)
            covered = offset <= start and offset + length >= stop
            if not covered and not self.present.test(b):
                pwrite_all(self.fd, self.base_read(start, stop - start), start)

    def _mark(self, offset: int, length: int) -> None:
        bs, bits = self.block_size, self.present.bits
        first, last = offset // bs, (offset + length - 1) // bs
        for b in range(first, last + 1):
            bits[b >> 3] |= 1 << (b & 7)
        lo, hi = first >> 3, (last >> 3) + 1
        self._unsynced = (lo, hi) if self._unsynced is None else (min(lo, self._unsynced[0]),
                                                                  max(hi, self._unsynced[1]))
        self.bytes_written += length

    # -- a write observer of the volume it was frozen from (an image, or a live volume) --------------------
    def before_write(self, batch: Sequence[WriteIntent]) -> None:
        """The observed volume is about to change: keep its current content of blocks the clone
        has not got (the same as a point in time's preservation)."""
        assert self.observed is not None
        with self.lock:
            if self.closed or self.broken:
                return
            if self._unsynced is not None:
                # a block skipped below because a host wrote it must be the clone's for good before
                # the observed volume overwrites the base: else a crash would show the new content
                self._flush_locked()
            try:
                preserve(self.observed, self, batch)  # copies, one fdatasync, then the presence bits
            except OSError as e:
                if not self.private:
                    raise  # a clone refuses the write that would change what it shows
                self.broken = f"{e.strerror or e} (keeping the frozen view)"  # a verify must not fail writes

    def after_write(self, batch: Sequence[WriteIntent]) -> None:
        pass

    def write_failed(self, batch: Sequence[WriteIntent]) -> None:
        pass  # the copies stay: the volume still holds what they copied

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            os.close(self.fd)
            self.present.close()


def _file_reader(volume: Volume) -> BaseRead:
    """A clone's base read straight from a volume's file: an image, or a live volume it freezes
    (it observes that volume, so a block that changes is copied up first)."""
    return lambda offset, length: pread_all(volume.fd, length, offset)


class Clones:
    """The clone verbs of :class:`~engine.storage.storage.Storage` (a mixin: it uses the storage's
    metadata, lock, clock, files, volumes and relationships). Rows in ``clones`` (node.db)."""

    meta: Meta
    lock: threading.RLock
    clock: Clock
    files: Root
    volumes: dict[str, Volume]
    snapshots: dict[str, CompleteImage | Differential]
    clones: dict[str, Clone]
    frozen: dict[str, Clone]
    hosts: Hosts

    def snapshot(self, name: str) -> CompleteImage | Differential: ...  # provided by Storage

    def read_snapshot(self, name: str, point: str | None, offset: int, length: int) -> bytes: ...

    def create_clone(self, name: str, origin: str) -> dict:
        """A writable clone of ``SNAPSHOT@POINT`` (or of a complete-image ``SNAPSHOT``): nothing is copied."""
        check_name("clone", name)
        snap, _, point = origin.partition("@")
        with self.lock:
            if name in self.volumes or name in self.snapshots or name in self.clones:
                raise AlreadyExists(f"{name!r} already exists (clones, volumes and snapshots share one namespace)")
            rel = self.snapshot(snap)
            if isinstance(rel, CompleteImage):
                if point:
                    raise InvalidInput(f"snapshot {snap!r} is complete-image: clone it without @POINT")
                if rel.state != "ready" or rel.pending is not None:
                    raise Conflict(f"snapshot {snap!r} is {'never enabled' if rel.state == 'new' else 'incrementing'}:"
                                   " its image is not a recovery point yet")
            elif not point or rel.find(point) < 0:
                raise NotFound(f"point in time {origin!r} does not exist" if point else
                               f"snapshot {snap!r} is differential: name a point in time, {snap}@POINT")
            source = rel.source
            data, mapfile = self.files.clone(name)
            for path in (data, mapfile):
                if os.path.exists(path):  # an orphan of an interrupted create
                    os.unlink(path)
            create_sparse(data, source.size)
            BlockBitmap.create(mapfile, source.nblocks).close()
            now = iso(self.clock())
            self.meta.execute("INSERT INTO clones (name, snapshot, point, size, block_size, created_at) "
                              "VALUES (?,?,?,?,?,?)", name, snap, point or None, source.size, source.block_size, now)
            self._attach_clone({"name": name, "snapshot": snap, "point": point or None, "size": source.size,
                                "block_size": source.block_size, "created_at": now, "bytes_written": 0})
            return self.clone_info(name)

    def _attach_clone(self, row: dict) -> Clone:
        """The clone of a row (at create, and at open); a complete-image origin's image is observed."""
        rel = self.snapshots[row["snapshot"]]
        origin = Origin(row["snapshot"], row["point"])
        data, mapfile = self.files.clone(row["name"])
        image = rel.image if isinstance(rel, CompleteImage) else None
        if image is not None:
            base = _file_reader(image)
        else:
            def base(offset: int, length: int, snap: str = origin.snapshot, point: str | None = origin.point) -> bytes:
                return self.read_snapshot(snap, point, offset, length)
        clone = Clone(row["name"], origin, row["size"], row["block_size"], data, mapfile, row["created_at"], base,
                      image, row["bytes_written"])
        if image is not None:
            with image.lock:
                image.observers.append(clone)
        self.clones[clone.name] = clone
        return clone

    def _sweep_clone_files(self) -> None:
        """At open: files of clones whose creation or deletion a crash cut short, and every frozen
        view (a verify's does not outlive its process)."""
        for f in os.listdir(self.files.sub("frozen")):
            os.unlink(self.files.sub("frozen", f))
        keep = {os.path.basename(p) for c in self.clones for p in self.files.clone(c)}
        for f in set(os.listdir(self.files.sub("clones"))) - keep:
            os.unlink(self.files.sub("clones", f))

    def clone(self, name: str) -> Clone:
        try:
            return self.clones[name]
        except KeyError:
            raise NotFound(f"clone {name!r} does not exist") from None

    def clone_info(self, name: str) -> dict:
        c = self.clone(name)
        return {**c.info(), "allocated": os.stat(c.data_path).st_blocks * 512, "hosts": self.hosts.count(name)}

    def list_clones(self) -> list[dict]:
        return [self.clone_info(n) for n in sorted(self.clones)]

    def clones_of(self, snapshot: str, point: str | None = None) -> list[str]:
        """The clones made from a snapshot (from one of its points, if ``point``)."""
        return sorted(c.name for c in self.clones.values()
                      if c.origin.snapshot == snapshot and (point is None or c.origin.point == point))

    def delete_clone(self, name: str, force: bool = False) -> None:
        with self.lock:
            c = self.clone(name)
            if self.hosts.count(name) and not force:
                raise Conflict(f"clone {name!r} is open by {self.hosts.count(name)} NBD client(s): "
                               "disconnect them, or delete with --force")
            if c.observed is not None:
                with c.observed.lock:
                    c.observed.observers.remove(c)
            self.meta.execute("DELETE FROM clones WHERE name=?", name)
            del self.clones[name]
            c.close()
            for path in self.files.clone(name):
                os.unlink(path)
            fsync_dir(self.files.sub("clones"))

    # -- frozen views: private clones of a live volume (a verify's temporary point) ----------------------
    def freeze(self, volume: Volume, key: str) -> Clone:
        """``volume`` as of now, kept by copy-on-write, O(1): the caller holds the volume's lock, so
        that the instant is a write-order point. Private (no export, no row): swept at the next open."""
        self.thaw(key)
        data, mapfile = self.files.frozen(key)
        for path, size in ((data, volume.size), (mapfile, (volume.nblocks + 7) // 8)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
        view = Clone(key, Origin(volume.name, None), volume.size, volume.block_size, data, mapfile,
                     iso(self.clock()), _file_reader(volume), volume)
        view.private = True
        with volume.lock:
            volume.observers.append(view)
        self.frozen[key] = view
        return view

    def thaw(self, key: str) -> None:
        view = self.frozen.pop(key, None)
        if view is None:
            return
        assert view.observed is not None
        with view.observed.lock:
            view.observed.observers.remove(view)
        view.close()
        for path in self.files.frozen(key):
            os.unlink(path)

    def flush_clone(self, name: str) -> None:
        c = self.clone(name)
        c.flush()
        self.meta.execute("UPDATE clones SET bytes_written=? WHERE name=?", c.bytes_written, name)
