import os
import threading
from datetime import datetime, timezone

import pytest

from engine import AlreadyExists, Conflict, InvalidInput, Node, NotFound

BS = 64 * 1024


def fill(node, vol, block, byte, n=1):
    node.write(vol, block * BS, bytes([byte]) * (BS * n))


def test_first_enable_copies_allocated_blocks_then_only_dirty(root):
    with Node(root) as node:
        node.create_volume("v", "64MiB")
        for b in (0, 10, 500, 1023):
            fill(node, "v", b, b % 250 + 1)
        node.create_snapshot("v-ci", "v", "complete-image")
        first = node.enable_snapshot("v-ci")
        assert first["blocks"] == 4 and first["bytes"] == 4 * BS
        fill(node, "v", 10, 99)
        for _ in range(100):  # rewritten many times: copied once
            node.write("v", 20 * BS + 7, b"hot")
        second = node.enable_snapshot("v-ci")
        assert second["blocks"] == 2
        assert node.read_snapshot("v-ci", None, 10 * BS, 4) == bytes([99]) * 4
        assert node.read_snapshot("v-ci", None, 20 * BS + 7, 3) == b"hot"
        assert node.enable_snapshot("v-ci")["blocks"] == 0
        info = node.snapshot_info("v-ci")
        assert info["enables"] == 3 and info["state"] == "ready" and info["dirty_blocks"] == 0


def test_never_enabled_snapshot_cannot_be_read(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        with pytest.raises(Conflict, match="never been enabled"):
            node.read_snapshot("v-ci", None, 0, 1)


def test_writes_during_an_increment_do_not_leak_into_it(root):
    """Enabling fixes the image at one instant; the copy runs afterwards while writes go on. A
    write to a block not yet copied first copies the old content (and reads of the image mid-way
    see the enable instant too)."""
    with Node(root) as node:
        node.create_volume("v", "4MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        for b in range(64):
            fill(node, "v", b, 1)
        rel = node.snapshot("v-ci")
        vol = node.volume("v")
        with rel.enable_lock:
            with vol.lock:
                rel.begin_enable("t0")
            for b in range(0, 64, 3):
                fill(node, "v", b, 2)  # lands while the increment is pending
            assert node.read_snapshot("v-ci", None, 0, 64 * BS) == bytes([1]) * (64 * BS)
            result = rel.finish_enable()
        assert result.blocks == 64
        assert node.read_snapshot("v-ci", None, 0, 64 * BS) == bytes([1]) * (64 * BS)
        # the blocks written mid-increment are dirty for the next one, and only they
        assert node.snapshot_info("v-ci")["dirty_blocks"] == len(range(0, 64, 3))
        assert node.enable_snapshot("v-ci")["blocks"] == len(range(0, 64, 3))
        assert node.read_snapshot("v-ci", None, 0, BS) == bytes([2]) * BS


def test_interrupted_increment_is_reported_and_repaired(root):
    node = Node(root)
    node.create_volume("v", "4MiB")
    node.create_snapshot("v-ci", "v", "complete-image")
    fill(node, "v", 0, 1, n=8)
    node.enable_snapshot("v-ci")
    fill(node, "v", 0, 2, n=8)
    rel = node.snapshot("v-ci")
    with node.volume("v").lock:
        rel.begin_enable("t1")  # and then the process dies before copying
    node.meta.close()
    node.files.release()  # drop the root lock the way a killed process would
    with Node(root) as again:
        info = again.snapshot_info("v-ci")
        assert info["state"] == "incomplete" and not info["consistent"]
        with pytest.raises(Conflict, match="incomplete"):
            again.read_snapshot("v-ci", None, 0, 1)
        assert again.enable_snapshot("v-ci")["blocks"] == 8  # every block of the lost increment
        assert again.read_snapshot("v-ci", None, 0, 8 * BS) == bytes([2]) * 8 * BS


def test_increment_goes_through_the_snapshot_volume_write_path(root):
    """A consumer of the snapshot volume (here another complete-image snapshot of it, as an AIM
    set will be) sees exactly the blocks each increment copied."""
    with Node(root) as node:
        node.create_volume("v", "8MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        node.create_snapshot("v-ci-ci", "v-ci", "complete-image")
        node.enable_snapshot("v-ci")
        node.enable_snapshot("v-ci-ci")
        for b in (1, 5, 9):
            for i in range(20):
                fill(node, "v", b, i + 1)
        node.enable_snapshot("v-ci")
        assert node.snapshot_info("v-ci-ci")["dirty_blocks"] == 3
        assert node.enable_snapshot("v-ci-ci")["blocks"] == 3
        assert node.read_snapshot("v-ci-ci", None, 5 * BS, 10) == bytes([20]) * 10


def test_differential_points_and_deletes(root):
    t = datetime(2026, 3, 29, 0, 59, 59, 123000, tzinfo=timezone.utc)
    with Node(root, clock=lambda: t) as node:
        node.create_volume("v", "2MiB")
        node.create_snapshot("v-pit", "v", "differential")
        contents = []
        for i in range(5):
            fill(node, "v", i % 3, i + 1)
            contents.append(node.read("v", 0, 4 * BS))
            node.enable_snapshot("v-pit", f"p{i}")
        with pytest.raises(AlreadyExists):
            node.enable_snapshot("v-pit", "p1")
        auto = node.enable_snapshot("v-pit")["point"]
        assert auto == "20260329T005959.123Z"
        assert node.enable_snapshot("v-pit")["point"] == "20260329T005959.123Z-2"
        fill(node, "v", 0, 200)
        for i in (2, 0, 4):  # delete from the middle, the oldest, the newest-named
            node.delete_point("v-pit", f"p{i}")
            for j in range(5):
                if j not in (2, 0, 4)[: (2, 0, 4).index(i) + 1]:
                    assert node.read_snapshot("v-pit", f"p{j}", 0, 4 * BS) == contents[j]
        stored = {p["name"]: p["stored_blocks"] for p in node.snapshot_info("v-pit")["points"]}
        assert set(stored) == {"p1", "p3", auto, f"{auto}-2"}
    with Node(root) as node:
        assert node.read_snapshot("v-pit", "p1", 0, 4 * BS) == contents[1]
        assert node.read_snapshot("v-pit", "p3", 0, 4 * BS) == contents[3]


def test_only_overwritten_blocks_are_stored(root):
    with Node(root) as node:
        node.create_volume("v", "64MiB")
        fill(node, "v", 0, 1, n=100)
        node.create_snapshot("v-pit", "v", "differential")
        node.enable_snapshot("v-pit", "p")
        for _ in range(10):
            fill(node, "v", 3, 7)
        point = node.snapshot_info("v-pit")["points"][0]
        assert point["stored_blocks"] == 1
        assert os.stat(os.path.join(root, "points", "v-pit", "1.data")).st_blocks * 512 <= 2 * BS


def test_snapshot_reference_errors(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        node.create_snapshot("v-pit", "v", "differential")
        with pytest.raises(InvalidInput, match="invalid snapshot type"):
            node.create_snapshot("x", "v", "full")
        with pytest.raises(NotFound, match="volume 'w'"):
            node.create_snapshot("x", "w", "differential")
        with pytest.raises(AlreadyExists):
            node.create_snapshot("v", "v", "differential")
        with pytest.raises(InvalidInput, match="name a point"):
            node.read_snapshot("v-pit", None, 0, 1)
        with pytest.raises(InvalidInput, match="without @POINT"):
            node.read_snapshot("v-ci", "p", 0, 1)
        with pytest.raises(NotFound, match="v-pit@nope"):
            node.read_snapshot("v-pit", "nope", 0, 1)
        with pytest.raises(NotFound):
            node.delete_point("v-pit", "nope")
        with pytest.raises(InvalidInput, match="invalid point label"):
            node.enable_snapshot("v-pit", "bad label")
        assert node.snapshot_info("v-pit")["points"] == []


def test_delete_relationships_removes_their_files(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.create_snapshot("v-ci", "v", "complete-image")
        node.create_snapshot("v-pit", "v", "differential")
        node.enable_snapshot("v-pit", "a")
        fill(node, "v", 0, 3)
        node.delete_snapshot("v-ci")
        node.delete_snapshot("v-pit")
        fill(node, "v", 0, 4)  # no observer left behind
        assert node.list_snapshots() == [] and [v["name"] for v in node.list_volumes()] == ["v"]
    assert os.listdir(os.path.join(root, "bitmaps")) == []
    assert os.listdir(os.path.join(root, "points")) == []


def test_snapshot_set_is_one_write_order_point(root):
    """A writer bumps a counter on volume a, then on volume b, forever. A set enabled at one
    write-order point sees a == b or a == b + 1; enabling members one by one would let b run ahead
    or a run far ahead."""
    with Node(root) as node:
        for v in ("a", "b"):
            node.create_volume(v, "1MiB", "4KiB")
            node.create_snapshot(f"{v}-pit", v, "differential")
            node.create_snapshot(f"{v}-ci", v, "complete-image")
        node.create_snapshot_set("ab", ["a-pit", "b-pit", "a-ci", "b-ci"])
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                i += 1
                node.write("a", 0, i.to_bytes(8, "little"))
                node.write("b", 0, i.to_bytes(8, "little"))

        t = threading.Thread(target=writer)
        t.start()
        try:
            results = [node.enable_snapshot_set("ab", f"s{k}") for k in range(30)]
        finally:
            stop.set()
            t.join()
        for k, r in enumerate(results):
            assert r["point"] == f"s{k}" and len({m["enabled_at"] for m in r["members"]}) == 1
            a = int.from_bytes(node.read_snapshot("a-pit", f"s{k}", 0, 8), "little")
            b = int.from_bytes(node.read_snapshot("b-pit", f"s{k}", 0, 8), "little")
            assert a - b in (0, 1), (k, a, b)
        a = int.from_bytes(node.read_snapshot("a-ci", None, 0, 8), "little")
        b = int.from_bytes(node.read_snapshot("b-ci", None, 0, 8), "little")
        assert a - b in (0, 1)
        assert node.snapshot_set_info("ab")["enables"] == 30


def test_snapshot_set_errors_and_membership(root):
    with Node(root) as node:
        node.create_volume("v", "1MiB")
        node.create_snapshot("v-pit", "v", "differential")
        with pytest.raises(NotFound):
            node.create_snapshot_set("s", ["v-pit", "nope"])
        with pytest.raises(InvalidInput, match="twice"):
            node.create_snapshot_set("s", ["v-pit", "v-pit"])
        with pytest.raises(InvalidInput, match="at least one"):
            node.create_snapshot_set("s", [])
        assert node.list_snapshot_sets() == []
        node.create_snapshot_set("s", ["v-pit"])
        with pytest.raises(AlreadyExists):
            node.create_snapshot_set("s", ["v-pit"])
        with pytest.raises(Conflict, match="member of snapshot set"):
            node.delete_snapshot("v-pit")
        node.delete_snapshot_set("s")
        node.delete_snapshot("v-pit")
        with pytest.raises(NotFound):
            node.enable_snapshot_set("s")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_points_open_only_when_used_and_few_stay_open(root, monkeypatch):
    """A node with many points opens none of them (no descriptor, no map read), counts their
    stored blocks without keeping them open, reads every one right in any order while at most
    OPEN_OLDER older points stay open, and deletes and enables as before."""
    from engine.storage import snapshots
    monkeypatch.setattr(snapshots, "OPEN_OLDER", 4)
    n = 40
    with Node(root) as node:
        node.create_volume("v", "4MiB")
        node.create_snapshot("v-pit", "v", "differential")
        for i in range(n):  # point p{i}: blocks 0..i hold i+1 (block i+1 is still 0 there)
            fill(node, "v", i, i + 1)
            node.enable_snapshot("v-pit", f"p{i:02d}")
    before = _fds()
    with Node(root) as node:
        opened = _fds() - before
        assert opened < 10, f"{opened} descriptors opened for {n} points"
        stored = [p["stored_blocks"] for p in node.snapshot_info("v-pit")["points"]]
        assert stored == [1] * (n - 1) + [0]  # each older point keeps the block the next write overwrote
        assert _fds() - before == opened
        order = list(range(n))
        import random
        random.Random(7).shuffle(order)
        for i in order:
            want = b"".join(bytes([b + 1 if b <= i else 0]) * BS for b in range(n + 1))
            assert node.read_snapshot("v-pit", f"p{i:02d}", 0, (n + 1) * BS) == want, i
            # what it used stays open besides OPEN_OLDER others (the next read of it needs the same)
            assert _fds() - before <= opened + 2 * (4 + (n - i)), "more points left open than OPEN_OLDER"
        assert node.read_snapshot("v-pit", "p00", 0, BS) == bytes([1]) * BS
        loads: list[str] = []

        class Counted(snapshots.BlockBitmap):
            def __init__(self, path, nblocks, bits=None):
                loads.append(path)
                super().__init__(path, nblocks, bits)
        monkeypatch.setattr(snapshots, "BlockBitmap", Counted)
        for _ in range(3):  # the same deep read again: its chain of maps stayed open (no thrashing)
            assert node.read_snapshot("v-pit", "p00", 0, (n + 1) * BS)[:BS] == bytes([1]) * BS
        assert loads == []
        node.read_snapshot("v-pit", f"p{n - 2:02d}", 0, BS)  # a shallow read: the rest is closed again
        assert _fds() - before <= opened + 2 * (4 + 2), "more points left open than OPEN_OLDER"
        node.delete_point("v-pit", "p10")
        fill(node, "v", 0, 250)
        node.enable_snapshot("v-pit", "last")
        assert node.read_snapshot("v-pit", "p09", 0, BS) == bytes([1]) * BS
        assert node.read_snapshot("v-pit", "p39", 0, BS) == bytes([1]) * BS
        assert node.read_snapshot("v-pit", "last", 0, BS) == bytes([250]) * BS
