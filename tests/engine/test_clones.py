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
