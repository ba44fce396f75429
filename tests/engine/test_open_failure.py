"""A root that fails to open keeps neither its lock nor its descriptors: once the cause is
mended, the same process opens it again (a leaked ``flock`` would say "open in another process")."""

import os

import pytest

from engine import Conflict, Node


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_failed_open_releases_the_root_lock_and_files(root):
    with Node(root) as node:
        node.create_volume("a", "1MiB")
        node.create_volume("b", "1MiB")
    path = os.path.join(root, "volumes", "b.img")
    os.rename(path, path + ".away")  # a volume file missing under its row
    before = _fds()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            Node(root)
    assert _fds() == before
    os.rename(path + ".away", path)
    with Node(root) as node:
        assert [v["name"] for v in node.list_volumes()] == ["a", "b"]
        with pytest.raises(Conflict):
            Node(root)  # the lock itself still works
