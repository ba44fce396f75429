"""What a block-protocol client may open: a volume (read-write), a complete-image snapshot
(read-only, consistent even mid-increment), or ``SNAPSHOT@POINT`` (read-only)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import Conflict, NotFound
from ..storage.clones import Clone
from ..storage.snapshots import CompleteImage
from ..storage.volume import Volume


@dataclass
class Export:
    name: str
    size: int
    description: str
    read: Callable[[int, int], bytes]
    volume: Volume | Clone | None = None  # set only for read-write exports
    read_into: Callable[[int, memoryview], None] | None = None  # a plain volume's: into the server's buffer

    @property
    def read_only(self) -> bool:
        return self.volume is None

    def _writable(self) -> Volume | Clone:
        if self.volume is None:
            raise Conflict(f"export {self.name!r} is read-only")
        return self.volume

    def write_many(self, writes: Sequence[tuple[int, bytes | memoryview]], fua: bool = False) -> None:
        self._writable().write_many(writes, fua=fua)

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        self._writable().write_zeroes(offset, length, fua=fua)

    def flush(self) -> None:
        if self.volume is not None:
            self.volume.flush()


def resolve(node, name: str) -> Export:
    """The export called ``name`` on ``node`` (an :class:`engine.node.Node`)."""
    snap_name, sep, point = name.partition("@")
    if sep:
        rel = node.snapshots.get(snap_name)
        if rel is None or isinstance(rel, CompleteImage) or rel.find(point) < 0:
            raise NotFound(f"no point in time {name!r}")
        return Export(name, rel.source.size, f"point in time of {rel.source.name}",
                      lambda o, n: node.read_snapshot(snap_name, point, o, n))
    rel = node.snapshots.get(name)
    if isinstance(rel, CompleteImage):
        return Export(name, rel.source.size, f"complete-image snapshot of {rel.source.name}",
                      lambda o, n: node.read_snapshot(name, None, o, n))
    clone = node.clones.get(name)
    if clone is not None:
        return Export(name, clone.size, f"clone of {clone.origin}", clone.read, clone)
    vol = node.volumes.get(name)
    if vol is None or vol.role != "volume":
        raise NotFound(f"no export {name!r}")
    if vol.replica_of:
        return Export(name, vol.size, f"AIM destination of {vol.replica_of}", vol.read, read_into=vol.read_into)
    return Export(name, vol.size, "volume", vol.read, vol, vol.read_into)


def names(node) -> list[tuple[str, str]]:
    """(name, description) of every export, for NBD_OPT_LIST."""
    out = [(v.name, "volume") for v in node.volumes.values() if v.role == "volume"]
    out += [(c.name, f"clone of {c.origin}") for c in node.clones.values()]
    for rel in node.snapshots.values():
        if isinstance(rel, CompleteImage):
            out.append((rel.name, f"complete-image snapshot of {rel.source.name}"))
        else:
            out.extend((f"{rel.name}@{p.name}", f"point in time of {rel.source.name}") for p in rel.points)
    return sorted(out)
