"""Clones and frozen views against the races of their observed volume: a volume's flush calls its
observers outside its lock, so it can reach a clone just deleted (found by the verify test, where a
host's durable write failed with "Bad file descriptor" as a verify ended)."""

import pytest

from engine import Node, NotFound


def test_a_flush_that_reaches_a_deleted_view_is_harmless(tmp_path):
    node = Node(str(tmp_path / "n"))
    node.create_volume("v", 1 << 20, "4KiB")
    vol = node.volume("v")
    with vol.lock:
        node.freeze(vol, "verify-x")
    node.write("v", 0, b"after the freeze")
    observers = list(vol.observers)  # what Volume.flush takes under the lock, then calls without it
    node.thaw("verify-x")
    for o in observers:
        o.flush()
    node.write("v", 0, b"still writable", fua=True)
    node.close()


def test_a_deleted_clone_says_so(tmp_path):
    node = Node(str(tmp_path / "n"))
    node.create_volume("v", 1 << 20, "4KiB")
    node.create_snapshot("v-ci", "v", "complete-image")
    node.enable_snapshot("v-ci")
    node.create_clone("c", "v-ci")
    clone = node.clones["c"]
    image_observers = list(node.volume("v-ci").observers)
    node.delete_clone("c")
    for o in image_observers:
        o.flush()
    with pytest.raises(NotFound, match="was deleted"):
        clone.read(0, 4096)
    node.close()


def test_a_restore_holds_its_origin_point_while_it_copies(tmp_path, monkeypatch):
    """A delete of the origin point (retention, an operator) during the copy waits for the restore;
    it used to let the restore read the newest point instead and report success (found in review)."""
    import threading

    import engine.storage.restore as restore
    node = Node(str(tmp_path / "n"))
    bs = 4096
    node.create_volume("v", 4 * bs, "4KiB")
    node.create_snapshot("d", "v", "differential")
    for fill, point in ((b"A", "p1"), (b"B", "p2")):
        for b in range(4):
            node.write("v", b * bs, fill * bs)
        node.enable_snapshot("d", point)
    for b in range(4):
        node.write("v", b * bs, b"C" * bs)
    real_runs, deleter = restore.runs, []

    def runs(*a):
        t = threading.Thread(target=node.delete_point, args=("d", "p1"))
        t.start()
        deleter.append(t)
        t.join(0.3)  # it waits for the restore's hold on the snapshot
        yield from real_runs(*a)
    monkeypatch.setattr(restore, "runs", runs)
    node.restore_volume("v", "d@p1")
    assert node.read("v", 0, 4 * bs) == b"A" * 4 * bs
    deleter[0].join(10)
    assert node.snapshots["d"].find("p1") < 0  # and then the delete went through
    node.close()


CHILD = """
import os, sys
from engine import Node
node = Node(sys.argv[1])
node.create_volume("src", 1 << 20, "4KiB")
node.write("src", 0, b"A" * 4096)
node.flush("src")
node.create_snapshot("img", "src", "complete-image")
node.enable_snapshot("img")
node.create_clone("c", "img")
node.write("c", 0, b"H" * 4096)  # a host's write to the clone, not flushed
node.write("src", 0, b"B" * 4096)
node.snapshots["img"].image.flush = lambda: os._exit(0)  # die after the increment copied, before it flushed
node.enable_snapshot("img")
"""


def test_a_crash_after_an_increment_never_shows_the_new_image_in_a_clone(tmp_path):
    """The clone's unflushed host write to a block, then an increment of the image over it, then a
    crash: the clone shows its base or the host's write, never the new image (found in review)."""
    import subprocess
    import sys
    root = str(tmp_path / "n")
    subprocess.run([sys.executable, "-c", CHILD, root], check=True)
    node = Node(root)
    assert node.read("c", 0, 1) in (b"A", b"H")
    node.close()
