"""The engine against a simple in-memory model: random aligned and unaligned writes, zeroing,
increments, points in time, snapshot sets, deletes, writable clones of points and images,
restores, and node reopens. Every read is compared."""

import shutil
import tempfile

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import Conflict, Node

BS = 4096
SIZES = {"a": 48 * BS, "b": 32 * BS + 1024}  # b ends in a partial block


class EngineModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.root = tempfile.mkdtemp(prefix="aimsnap-model-")
        self.node = Node(self.root)
        self.vols = {name: bytearray(size) for name, size in SIZES.items()}
        self.images: dict[str, bytes | None] = {}  # complete-image snapshot -> content at last enable
        self.dirty: dict[str, set[int]] = {}  # complete-image snapshot -> blocks written since
        self.points: dict[str, dict[str, bytes]] = {}  # differential snapshot -> point -> content
        self.source: dict[str, str] = {}
        self.clones: dict[str, tuple[str, bytearray]] = {}  # clone -> (origin, content)
        self.counter = 0
        for name, size in SIZES.items():
            self.node.create_volume(name, size, BS)
        for vol in SIZES:
            self.node.create_snapshot(f"{vol}-ci", vol, "complete-image")
            self.node.create_snapshot(f"{vol}-pit", vol, "differential")
            self.images[f"{vol}-ci"] = None
            self.dirty[f"{vol}-ci"] = set()
            self.points[f"{vol}-pit"] = {}
            self.source[f"{vol}-ci"] = self.source[f"{vol}-pit"] = vol
        self.node.create_snapshot_set("all", ["a-ci", "a-pit", "b-ci", "b-pit"])

    def teardown(self) -> None:
        self.node.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _touch(self, vol: str, offset: int, length: int) -> None:
        for snap, blocks in self.dirty.items():
            if self.source[snap] == vol and blocks is not None:
                blocks.update(range(offset // BS, (offset + length - 1) // BS + 1))

    @rule(vol=st.sampled_from(sorted(SIZES)), data=st.data())
    def write(self, vol: str, data: st.DataObject) -> None:
        size = SIZES[vol]
        offset = data.draw(st.one_of(st.integers(0, size - 1), st.integers(0, size // BS - 1).map(lambda b: b * BS)))
        length = data.draw(st.integers(1, min(3 * BS, size - offset)))
        payload = data.draw(st.binary(min_size=length, max_size=length)) if length < 64 else \
            bytes([data.draw(st.integers(1, 255))]) * length
        self.node.write(vol, offset, payload)
        self.vols[vol][offset:offset + length] = payload
        self._touch(vol, offset, length)

    @rule(vol=st.sampled_from(sorted(SIZES)), data=st.data())
    def write_batch(self, vol: str, data: st.DataObject) -> None:
        """Several writes landing as one batch (as an NBD client's queued requests do), often to
        the same blocks: observers see them all before any lands, and must still preserve and
        increment exactly what the model says."""
        size = SIZES[vol]
        writes = []
        for _ in range(data.draw(st.integers(1, 5))):
            offset = data.draw(st.integers(0, size // BS - 1).map(lambda b: b * BS)
                               if data.draw(st.booleans()) else st.integers(0, size - 1))
            length = data.draw(st.integers(1, min(2 * BS, size - offset)))
            writes.append((offset, bytes([data.draw(st.integers(0, 255))]) * length))
        self.node.volume(vol).write_many(writes)
        for offset, payload in writes:
            self.vols[vol][offset:offset + len(payload)] = payload
            self._touch(vol, offset, len(payload))

    @rule(vol=st.sampled_from(sorted(SIZES)), data=st.data())
    def write_zeroes(self, vol: str, data: st.DataObject) -> None:
        size = SIZES[vol]
        offset = data.draw(st.integers(0, size - 1))
        length = data.draw(st.integers(1, min(4 * BS, size - offset)))
        self.node.volume(vol).write_zeroes(offset, length)
        self.vols[vol][offset:offset + length] = bytes(length)
        self._touch(vol, offset, length)

    @rule(vol=st.sampled_from(sorted(SIZES)))
    def increment(self, vol: str) -> None:
        snap = f"{vol}-ci"
        result = self.node.enable_snapshot(snap)
        if self.images[snap] is not None and self.dirty[snap] is not None:  # exactly the blocks written since
            assert result["blocks"] == len(self.dirty[snap])
        self.images[snap] = bytes(self.vols[vol])
        self.dirty[snap] = set()

    @rule(vol=st.sampled_from(sorted(SIZES)))
    def add_point(self, vol: str) -> None:
        self.counter += 1
        result = self.node.enable_snapshot(f"{vol}-pit", f"p{self.counter}")
        assert result["point"] == f"p{self.counter}"
        self.points[f"{vol}-pit"][result["point"]] = bytes(self.vols[vol])

    @rule()
    def enable_set(self) -> None:
        self.counter += 1
        result = self.node.enable_snapshot_set("all", f"p{self.counter}")
        assert result["point"] == f"p{self.counter}"
        for vol in SIZES:
            self.images[f"{vol}-ci"] = bytes(self.vols[vol])
            self.dirty[f"{vol}-ci"] = set()
            self.points[f"{vol}-pit"][result["point"]] = bytes(self.vols[vol])

    @precondition(lambda self: any(self.points.values()))
    @rule(data=st.data())
    def delete_point(self, data: st.DataObject) -> None:
        snap = data.draw(st.sampled_from(sorted(s for s, p in self.points.items() if p)))
        point = data.draw(st.sampled_from(sorted(self.points[snap])))
        users = sorted(c for c, (origin, _) in self.clones.items() if origin == f"{snap}@{point}")
        if users:
            try:
                self.node.delete_point(snap, point)
                raise AssertionError("a point with clones was deleted")
            except Conflict as e:
                assert all(u in str(e) for u in users), e
            return
        self.node.delete_point(snap, point)
        del self.points[snap][point]

    def _origins(self) -> list[str]:
        out = [f"{s}@{p}" for s, points in self.points.items() for p in points]
        return sorted(out + [s for s, image in self.images.items() if image is not None])

    def _content(self, origin: str) -> bytes:
        snap, _, point = origin.partition("@")
        return self.points[snap][point] if point else self.images[snap]  # type: ignore[return-value]

    @precondition(lambda self: len(self.clones) < 3 and (any(self.points.values()) or any(self.images.values())))
    @rule(data=st.data())
    def create_clone(self, data: st.DataObject) -> None:
        origin = data.draw(st.sampled_from(self._origins()))
        self.counter += 1
        name = f"clone{self.counter}"
        info = self.node.create_clone(name, origin)
        assert info["from"] == origin and info["blocks_held"] == 0  # nothing copied at create
        self.clones[name] = (origin, bytearray(self._content(origin)))

    @precondition(lambda self: self.clones)
    @rule(data=st.data())
    def write_clone(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.clones)))
        content = self.clones[name][1]
        offset = data.draw(st.integers(0, len(content) - 1))
        length = data.draw(st.integers(1, min(3 * BS, len(content) - offset)))
        if data.draw(st.booleans()):
            payload = bytes([data.draw(st.integers(0, 255))]) * length
            self.node.write(name, offset, payload)
        else:
            payload = bytes(length)
            self.node.clones[name].write_zeroes(offset, length)
        content[offset:offset + length] = payload
        if data.draw(st.booleans()):
            self.node.flush(name)

    @precondition(lambda self: self.clones)
    @rule(data=st.data())
    def delete_clone(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.clones)))
        self.node.delete_clone(name)
        del self.clones[name]

    @precondition(lambda self: any(self.points.values()) or any(self.images.values()))
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        """The volume becomes the point's (or the image's); a pre-restore point keeps what it was."""
        origin = data.draw(st.sampled_from(self._origins()))
        snap = origin.partition("@")[0]
        vol = self.source[snap]
        result = self.node.restore_volume(vol, origin)
        if "@" not in origin and self.dirty[snap] is not None:
            assert result["blocks"] == len(self.dirty[snap]), result  # only the blocks that differ
        before = bytes(self.vols[vol])
        assert result["pre_restore_points"] == [f"{vol}-pit@{result['pre_restore_points'][0].split('@')[1]}"]
        self.points[f"{vol}-pit"][result["pre_restore_points"][0].split("@")[1]] = before
        self.vols[vol][:] = self._content(origin)
        self.dirty[f"{vol}-ci"] = None  # which blocks the restore wrote is its business: not modelled

    @rule()
    def reopen(self) -> None:
        self.node.close()
        self.node = Node(self.root)

    @invariant()
    def everything_reads_as_the_model(self) -> None:
        if not hasattr(self, "node"):
            return
        for vol, content in self.vols.items():
            assert self.node.read(vol, 0, len(content)) == content, vol
        for snap, image in self.images.items():
            if image is not None:
                assert self.node.read_snapshot(snap, None, 0, len(image)) == image, snap
        for snap, points in self.points.items():
            for point, content in points.items():
                assert self.node.read_snapshot(snap, point, 0, len(content)) == content, f"{snap}@{point}"
                # unaligned windows too
                assert self.node.read_snapshot(snap, point, 1000, 5000) == content[1000:6000]
        for name, (_origin, content) in self.clones.items():
            assert self.node.read(name, 0, len(content)) == content, name
            assert self.node.read(name, 1000, 5000) == content[1000:6000]


TestEngineModel = EngineModel.TestCase


class FewOpenPoints(EngineModel):
    """The same model with one older point open per differential: every read and delete closes
    what the one before opened (the lazy opening of points, under churn)."""

    @initialize()
    def setup(self) -> None:
        from engine.storage import snapshots
        self._open_older, snapshots.OPEN_OLDER = snapshots.OPEN_OLDER, 1
        super().setup()

    def teardown(self) -> None:
        from engine.storage import snapshots
        super().teardown()
        snapshots.OPEN_OLDER = self._open_older


TestFewOpenPoints = FewOpenPoints.TestCase
