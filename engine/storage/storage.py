"""A node's storage: every volume, snapshot relationship and snapshot set under one root.

The public methods return plain dicts (what the CLI prints and the control API sends) and raise
:class:`~engine.errors.EngineError` with one line for the operator. Replication is not known
here: it attaches to volumes as a write observer (see :mod:`engine.node`, which wires both).
"""

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from datetime import datetime

from ..errors import AlreadyExists, Conflict, InvalidInput, NotFound
from .bitmap import BlockBitmap
from .clones import Clone, Clones
from .fsutil import create_sparse, data_extents, fsync_dir, make_dir
from .hosts import Hosts
from .meta import Meta
from .names import Clock, check_label, check_name, iso, point_stamp, utcnow
from .restore import Restore
from .root import Root
from .sets import SnapshotSets
from .snapshots import CompleteImage, Differential, EnableResult, Point
from .units import DEFAULT_BLOCK_SIZE, format_size, parse_size
from .volume import Volume, barrier

SNAPSHOT_TYPES = ("complete-image", "differential")

Relationship = CompleteImage | Differential


class Storage(SnapshotSets, Clones, Restore):
    """Volumes, relationships and snapshot sets of one root, with their metadata.

    Lock order (see :mod:`engine.node` for the whole hierarchy): a relationship's ``enable_lock``,
    then ``self.lock``, then volume locks in name order (:func:`~engine.storage.volume.barrier`).
    """

    def __init__(self, root: str, *, clock: Clock = utcnow, create: bool = True) -> None:
        self.clock = clock
        self.lock = threading.RLock()  # serialises changes to what exists (not IO)
        self.files = Root(root, create=create)
        self.root = self.files.path
        self.unclean_machine_restart = self.files.unclean_machine_restart
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Relationship] = {}
        self.clones: dict[str, Clone] = {}
        self.frozen: dict[str, Clone] = {}  # private frozen views (a verify's temporary points)
        self.hosts = Hosts()  # exports open over NBD (the NBD server keeps it)
        self.enable_listeners: list[Callable[[EnableResult], None]] = []  # e.g. metrics
        try:
            self.meta = Meta(self.files.db)
            self.files.made()
            try:
                self._load()
            except BaseException:
                self._close_files()
                self.meta.close()
                raise
        except BaseException:  # a root that fails to open keeps neither its lock nor its files
            self.files.release()
            raise

    def opened(self) -> None:
        """Everything that observes the volumes is attached: the root is in use until :meth:`close`."""
        self.files.mark(clean=False)

    def _load(self) -> None:
        for row in self.meta.query("SELECT * FROM volumes"):
            self.volumes[row["name"]] = Volume(row["name"], self.files.volume(row["name"]), row["size"],
                                               row["block_size"], row["role"])
        for row in self.meta.query("SELECT * FROM snapshots ORDER BY created_at"):
            source = self.volumes[row["source"]]
            if row["type"] == "complete-image":
                dirty = BlockBitmap(self.files.dirty(row["name"]), source.nblocks)
                if self.unclean_machine_restart:
                    dirty.set_all()
                rel: Relationship = CompleteImage(row["name"], source, self.volumes[row["name"]], dirty,
                                                  self.meta, row["state"])
            else:
                points = [self._open_point(row["name"], p, source.nblocks) for p in self.meta.query(
                    "SELECT * FROM points WHERE snapshot=? ORDER BY seq", row["name"])]
                rel = Differential(row["name"], source, points, self.meta)
            self.snapshots[row["name"]] = rel
            source.observers.append(rel)
        for row in self.meta.query("SELECT * FROM clones ORDER BY created_at"):
            self._attach_clone(row)
        self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Remove files whose creation or deletion a crash interrupted."""
        for f in os.listdir(self.files.sub("volumes")):
            if f.removesuffix(".img") not in self.volumes:
                os.unlink(self.files.sub("volumes", f))
        for f in os.listdir(self.files.sub("bitmaps")):
            rel = self.snapshots.get(f.removesuffix(".dirty"))
            if not isinstance(rel, CompleteImage) or f.endswith(".tmp"):
                os.unlink(self.files.sub("bitmaps", f))
        self._sweep_clone_files()
        for d in os.listdir(self.files.sub("points")):
            rel = self.snapshots.get(d)
            path = self.files.points(d)
            if not isinstance(rel, Differential):
                shutil.rmtree(path)
                continue
            keep = {f"{p.seq}.{ext}" for p in rel.points for ext in ("data", "map")}
            for f in os.listdir(path):
                if f not in keep:
                    os.unlink(os.path.join(path, f))

    def close(self) -> None:
        with self.lock:
            for v in self.volumes.values():
                v.flush()
            for c in self.clones:
                self.flush_clone(c)
            self._close_files()
            self.meta.close()
            self.files.mark(clean=True)
            self.files.release()

    def _close_files(self) -> None:
        for key in list(self.frozen):
            self.thaw(key)
        for c in self.clones.values():
            c.close()
        for rel in self.snapshots.values():
            rel.close()
        for v in self.volumes.values():
            v.close()

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_point(self, snapshot: str, row: dict, nblocks: int) -> Point:
        data, mapfile = self.files.point(snapshot, row["seq"])
        return Point(row["name"], row["seq"], row["created_at"], data, mapfile, nblocks)  # opened when used

    # -- lookups ----------------------------------------------------------------------------------------
    def volume(self, name: str) -> Volume:
        try:
            return self.volumes[name]
        except KeyError:
            raise NotFound(f"volume {name!r} does not exist") from None

    def snapshot(self, name: str) -> Relationship:
        try:
            return self.snapshots[name]
        except KeyError:
            raise NotFound(f"snapshot {name!r} does not exist") from None

    # -- volumes ------------------------------------------------------------------------------------------
    def create_volume(self, name: str, size: str | int, block_size: str | int = DEFAULT_BLOCK_SIZE) -> dict:
        return self._create_volume(name, size, block_size, role="volume")

    def _create_volume(self, name: str, size: str | int, block_size: str | int, role: str) -> dict:
        check_name("volume", name)
        nbytes, bs = parse_size(size), parse_size(block_size)
        if bs & (bs - 1) or not 4096 <= bs <= 1 << 24:
            raise InvalidInput(f"invalid block size {block_size!r}: a power of two from 4KiB to 16MiB")
        if nbytes % 512:
            raise InvalidInput(f"invalid size {size!r}: must be a multiple of 512 bytes")
        if nbytes > 1 << 50:
            raise InvalidInput(f"invalid size {size!r}: at most 1PiB")
        with self.lock:
            if name in self.volumes:
                raise AlreadyExists(f"volume {name!r} already exists")
            path = self.files.volume(name)
            if os.path.exists(path):  # an orphan of an interrupted create
                os.unlink(path)
            create_sparse(path, nbytes)
            self.meta.execute("INSERT INTO volumes VALUES (?,?,?,?,?)", name, nbytes, bs, role, iso(self.clock()))
            self.volumes[name] = Volume(name, path, nbytes, bs, role)
            return self.volume_info(name)

    def list_volumes(self) -> list[dict]:
        return [self.volume_info(n) for n in sorted(self.volumes)]

    def volume_info(self, name: str) -> dict:
        v = self.volume(name)
        row = self.meta.one("SELECT created_at FROM volumes WHERE name=?", name) or {}
        allocated = os.stat(v.path).st_blocks * 512
        return {"name": v.name, "size": v.size, "size_human": format_size(v.size), "block_size": v.block_size,
                "role": v.role, "allocated": allocated, "created_at": row.get("created_at"),
                "replica_of": v.replica_of,
                "snapshots": v.observed_by("snapshot"),
                "io": dict(v.stats.__dict__)}

    def delete_volume(self, name: str) -> None:
        with self.lock:
            v = self.volume(name)
            if v.role != "volume":
                raise Conflict(f"{name!r} is the volume of complete-image snapshot {name!r}: "
                               f"delete the snapshot instead")
            users = v.observed_by("snapshot")
            if users:
                raise Conflict(f"volume {name!r} is the source of snapshot(s) {', '.join(users)}: delete them first")
            for o in v.observers:  # e.g. an AIM set replicating it
                raise Conflict(f"volume {name!r} is the source of {o.kind} {o.name!r}: delete the {o.kind} first")
            if v.replica_of:
                raise Conflict(f"volume {name!r} is the destination of AIM set {v.replica_of!r}: "
                               "delete the AIM set first")
            self._drop_volume(v)

    def _drop_volume(self, v: Volume) -> None:
        self.meta.execute("DELETE FROM volumes WHERE name=?", v.name)
        del self.volumes[v.name]
        v.close()
        os.unlink(v.path)
        fsync_dir(os.path.dirname(v.path))

    def read(self, name: str, offset: int, length: int) -> bytes:
        """A volume's bytes (or a clone's: the data verbs take either)."""
        return (self.clones.get(name) or self.volume(name)).read(offset, length)

    def write(self, name: str, offset: int, data: bytes, *, fua: bool = False) -> None:
        if name in self.clones:
            self.clones[name].write_many([(offset, data)], fua=fua)
        else:
            self.volume(name).write(offset, data, fua=fua)

    def flush(self, name: str) -> None:
        self.flush_clone(name) if name in self.clones else self.volume(name).flush()

    def node_info(self) -> dict:
        return {"root": self.root, "volumes": len(self.volumes), "snapshots": len(self.snapshots),
                "unclean_machine_restart": self.unclean_machine_restart}

    # -- snapshot relationships -------------------------------------------------------------------------
    def create_snapshot(self, name: str, source: str, type: str) -> dict:
        check_name("snapshot", name)
        if type not in SNAPSHOT_TYPES:
            raise InvalidInput(f"invalid snapshot type {type!r}: use complete-image or differential")
        with self.lock:
            src = self.volume(source)
            if name in self.snapshots or name in self.volumes:
                raise AlreadyExists(f"a volume or snapshot named {name!r} already exists")
            now = iso(self.clock())
            if type == "complete-image":
                self._create_volume(name, src.size, src.block_size, role="snapshot")
                with src.lock:  # the first enable copies every block written so far
                    bs = src.block_size
                    extents = ((s // bs, (e - 1) // bs) for s, e in data_extents(src.fd, src.size))
                    dirty = BlockBitmap.create(self.files.dirty(name), src.nblocks, extents)
                    self.meta.execute("INSERT INTO snapshots (name,type,source,state,created_at) VALUES (?,?,?,?,?)",
                                      name, type, source, "new", now)
                    rel: Relationship = CompleteImage(name, src, self.volumes[name], dirty, self.meta, "new")
                    src.observers.append(rel)
            else:
                make_dir(self.files.points(name))
                with src.lock:
                    self.meta.execute("INSERT INTO snapshots (name,type,source,state,created_at) VALUES (?,?,?,?,?)",
                                      name, type, source, "new", now)
                    rel = Differential(name, src, [], self.meta)
                    src.observers.append(rel)
            self.snapshots[name] = rel
            return self.snapshot_info(name)

    def list_snapshots(self) -> list[dict]:
        return [self.snapshot_info(n) for n in sorted(self.snapshots)]

    def snapshot_info(self, name: str) -> dict:
        rel = self.snapshot(name)
        row = self.meta.one("SELECT * FROM snapshots WHERE name=?", name) or {}
        sets = [r["set_name"] for r in self.meta.query(
            "SELECT set_name FROM snapshot_set_members WHERE snapshot=? ORDER BY set_name", name)]
        state = rel.state
        if isinstance(rel, CompleteImage) and rel.state == "incrementing" and rel.pending is None:
            state = "incomplete"
        return {"name": name, "type": rel.type, "source": rel.source.name, "size": rel.source.size, "state": state,
                "enables": row.get("enables", 0), "last_enabled_at": row.get("last_enabled_at"),
                "created_at": row.get("created_at"), "snapshot_sets": sets, **rel.info()}

    def enable_snapshot(self, name: str, point: str | None = None) -> dict:
        """Enable one relationship: an increment, or a new point in time named ``point``."""
        return self._enable([self.snapshot(name)], point)[0].as_dict()

    def _enable(self, rels: list[Relationship], label: str | None) -> list[EnableResult]:
        """Enable ``rels`` at one write-order point: no write lands on any of their source volumes
        between the first and the last (all source locks are held while each fixes its content)."""
        check_label("point", label)
        rels = sorted(set(rels), key=lambda r: r.name)
        with contextlib.ExitStack() as stack:
            for rel in rels:  # one enable of a relationship at a time; taken before any volume lock
                stack.enter_context(rel.enable_lock)
            with self.lock:
                for rel in rels:  # deleted while this waited for its enable lock
                    if self.snapshots.get(rel.name) is not rel:
                        raise NotFound(f"snapshot {rel.name!r} does not exist")
                now = self.clock()
                diffs = [r for r in rels if isinstance(r, Differential)]
                point_name = self._unique_point_name(diffs, label, now)
                new_points = {r.name: self._new_point(r, point_name, now) for r in diffs}
                with barrier(r.source for r in rels):
                    for rel in rels:
                        if isinstance(rel, Differential):
                            rel.begin_enable(iso(now), new_points[rel.name])
                        else:
                            rel.begin_enable(iso(now))
            results = [rel.finish_enable() for rel in rels]
        for result in results:
            for listener in self.enable_listeners:
                listener(result)
        return results

    def _unique_point_name(self, diffs: list[Differential], label: str | None, now: datetime) -> str:
        base = label or point_stamp(now)
        taken = {p.name for r in diffs for p in r.points}
        if label is not None and label in taken:
            raise AlreadyExists(f"point in time {label!r} already exists")
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def _new_point(self, rel: Differential, name: str, now: datetime) -> Point:
        """Create a point's files and its row (durably), ready to become the newest point."""
        seq = (self.meta.one("SELECT MAX(seq) AS m FROM points WHERE snapshot=?", rel.name) or {}).get("m") or 0
        seq += 1
        data, mapfile = self.files.point(rel.name, seq)
        for path in (data, mapfile):
            if os.path.exists(path):
                os.unlink(path)
        create_sparse(data, rel.source.size)
        present = BlockBitmap.create(mapfile, rel.source.nblocks)
        row = {"name": name, "seq": seq, "created_at": iso(now)}
        with self.meta.transaction() as db:
            db.execute("INSERT INTO points VALUES (?,?,?,?)", (rel.name, name, seq, row["created_at"]))
            db.execute("UPDATE snapshots SET state='ready', enables=enables+1, last_enabled_at=? WHERE name=?",
                       (row["created_at"], rel.name))
        return Point(name, seq, row["created_at"], data, mapfile, rel.source.nblocks, present)

    def delete_snapshot(self, name: str) -> None:
        rel = self.snapshot(name)
        with rel.enable_lock, self.lock:  # the lock order: enable_lock, then the storage lock
            if self.snapshots.get(name) is not rel:
                raise NotFound(f"snapshot {name!r} does not exist")
            if self.clones_of(name):
                raise Conflict(f"snapshot {name!r} has clone(s) {', '.join(self.clones_of(name))}: delete them first")
            sets = self.snapshot_info(name)["snapshot_sets"]
            if sets:
                raise Conflict(f"snapshot {name!r} is a member of snapshot set(s) {', '.join(sets)}: "
                               "delete those first")
            if isinstance(rel, CompleteImage):
                users = rel.image.observed_by("snapshot")
                if users:
                    raise Conflict(f"the volume of snapshot {name!r} is the source of snapshot(s) "
                                   f"{', '.join(users)}: delete them first")
            with rel.source.lock:
                rel.source.observers.remove(rel)
                with self.meta.transaction() as db:
                    db.execute("DELETE FROM points WHERE snapshot=?", (name,))
                    db.execute("DELETE FROM snapshots WHERE name=?", (name,))
                del self.snapshots[name]
                rel.close()
            if isinstance(rel, CompleteImage):
                os.unlink(self.files.dirty(name))
                self._drop_volume(rel.image)
            else:
                shutil.rmtree(self.files.points(name), ignore_errors=True)

    def delete_point(self, name: str, point: str) -> None:
        rel = self.snapshot(name)
        if not isinstance(rel, Differential):
            raise InvalidInput(f"snapshot {name!r} is complete-image: it has no points in time")
        with rel.enable_lock, self.lock:  # the lock order: enable_lock, then the storage lock
            if self.snapshots.get(name) is not rel:
                raise NotFound(f"snapshot {name!r} does not exist")
            if self.clones_of(name, point):
                raise Conflict(f"point in time {name}@{point} has clone(s) {', '.join(self.clones_of(name, point))}: "
                               "delete them first")
            with rel.source.lock:
                index = rel.find(point)
                if index < 0:
                    raise NotFound(f"point in time {name}@{point} does not exist")
                removed = rel.remove_point(index)
                self.meta.execute("DELETE FROM points WHERE snapshot=? AND name=?", name, point)
                removed.close()  # under the source lock, as every open and close of a point
            for path in self.files.point(name, removed.seq):
                os.unlink(path)

    def read_snapshot(self, name: str, point: str | None, offset: int, length: int) -> bytes:
        rel = self.snapshot(name)
        if isinstance(rel, CompleteImage):
            if point is not None:
                raise InvalidInput(f"snapshot {name!r} is complete-image: read it without @POINT")
            return rel.read(offset, length)
        if point is None:
            raise InvalidInput(f"snapshot {name!r} is differential: name a point in time, {name}@POINT")
        return rel.read(point, offset, length)
