"""The power-loss file system against a model: after a cut, each file holds what it held at its
last fsync, and each name is what it was at its directory's last fsync."""

import os
import random
import sqlite3

import pytest

from engine.storage.fsutil import punch_hole

from .powerfs import PAGE, Mount, missing, sync_tree

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture
def fs(tmp_path):
    m = Mount(str(tmp_path / "disk"), str(tmp_path / "mnt"))
    yield m
    m.close()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: str, data: bytes, *, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_file_contents_match_a_model_of_synced_bytes(fs):
    """Random writes, truncates, punched holes and fsyncs; after each cut the file is exactly the
    model's content at its last fsync."""
    rng = random.Random(7)
    path = os.path.join(fs.mountpoint, "f")
    with open(path, "wb"):
        pass
    sync_tree(fs.mountpoint)
    durable = b""
    for _round in range(4):
        current = bytearray(durable)
        fd = os.open(path, os.O_RDWR)
        for _ in range(60):
            op = rng.random()
            if op < 0.6:
                off, n = rng.randrange(8 * PAGE), rng.randrange(1, 3 * PAGE)
                data = rng.randbytes(n)
                os.pwrite(fd, data, off)
                if off > len(current):
                    current += bytes(off - len(current))
                current[off:off + n] = data
            elif op < 0.75:
                n = rng.randrange(10 * PAGE)
                os.ftruncate(fd, n)
                current = current[:n] + bytes(max(0, n - len(current)))
            elif op < 0.85 and current:
                off, n = rng.randrange(len(current)), rng.randrange(1, 2 * PAGE)
                punch_hole(fd, off, n)
                end = min(off + n, len(current))
                current[off:end] = bytes(end - off)
            else:
                (os.fdatasync if rng.random() < 0.5 else os.fsync)(fd)
                durable = bytes(current)
            assert os.pread(fd, len(current) + 10, 0) == bytes(current)
        os.close(fd)
        fs.cut()
        assert _read(os.path.join(fs.backing, "f")) == durable
        fs.boot()
        assert _read(path) == durable
    assert sum(r["pages_reverted"] for r in fs.reports) > 0


def test_names_are_durable_only_after_their_directory_is_synced(fs):
    m = fs.mountpoint
    os.makedirs(f"{m}/d")
    for name, data in (("kept", b"old"), ("victim", b"victim"), ("over", b"over-old")):
        _write(f"{m}/d/{name}", data)
    sync_tree(m)
    # not durable: a new file, a new directory tree, a rename over a file, an unlink
    _write(f"{m}/d/new", b"new", sync=True)  # its data is synced, its name is not
    os.makedirs(f"{m}/d/tree/deeper")
    _write(f"{m}/d/tmp", b"over-new", sync=True)
    os.replace(f"{m}/d/tmp", f"{m}/d/over")
    os.unlink(f"{m}/d/victim")
    # durable: a rename whose directory is synced
    os.rename(f"{m}/d/kept", f"{m}/d/kept2")
    assert sorted(os.listdir(f"{m}/d")) == ["kept2", "new", "over", "tree"]
    _fsync(f"{m}/d")  # this also makes everything above durable, so redo the rest after it
    _write(f"{m}/d/later", b"later")
    os.rename(f"{m}/d/kept2", f"{m}/d/kept3")
    os.unlink(f"{m}/d/new")
    fs.cut()
    fs.boot()
    assert sorted(os.listdir(f"{m}/d")) == ["kept2", "new", "over", "tree"]
    assert _read(f"{m}/d/new") == b"new" and _read(f"{m}/d/over") == b"over-new"
    assert _read(f"{m}/d/kept2") == b"old"
    assert os.listdir(f"{m}/d/tree") == []  # "deeper" was in a directory never synced
    os.mkdir(f"{m}/d/tree/deeper")
    _fsync(f"{m}/d/tree")
    # and without the directory sync everything reverts, an overwritten file included
    _write(f"{m}/d/tmp", b"newest", sync=True)
    os.replace(f"{m}/d/tmp", f"{m}/d/over")
    os.unlink(f"{m}/d/kept2")
    os.rmdir(f"{m}/d/tree/deeper")
    os.makedirs(f"{m}/d/tree/gone")
    fs.cut()
    fs.boot()
    assert sorted(os.listdir(f"{m}/d")) == ["kept2", "new", "over", "tree"]
    assert _read(f"{m}/d/over") == b"over-new" and os.listdir(f"{m}/d/tree") == ["deeper"]


def test_sqlite_commits_survive_and_the_rest_does_not(fs):
    """SQLite (WAL, synchronous=FULL, as node.db) works on it: locks, shared memory, and what a
    commit made durable is there after a cut."""
    path = os.path.join(fs.mountpoint, "db.sqlite")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (n INTEGER)")
    db.commit()
    _fsync(fs.mountpoint)  # SQLite syncs the WAL's directory, not the database file's
    for n in range(50):
        db.execute("INSERT INTO t VALUES (?)", (n,))
        db.commit()
    fs.cut()
    db.close()
    fs.boot()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (50,)
    db.close()


def test_a_write_only_truncating_open_is_undone_too(fs):
    """``open(O_WRONLY | O_TRUNC)`` of a synced file (how a temporary file left by a cut is
    rewritten): the old bytes come back, though the opener could not read them."""
    path = os.path.join(fs.mountpoint, "f")
    _write(path, b"synced" * 1000, sync=True)
    _fsync(fs.mountpoint)
    _write(path, b"new")
    fs.cut()
    fs.boot()
    assert _read(path) == b"synced" * 1000
