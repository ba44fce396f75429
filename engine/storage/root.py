"""A node's root directory: who has it open, whether the last close was clean, and where each
file lives.

Layout::

    ROOT/node.db                    metadata (SQLite, WAL, synchronous=FULL)
    ROOT/node.lock                  who has the root open; was the last close clean
    ROOT/volumes/NAME.img           volume data (sparse)
    ROOT/bitmaps/SNAPSHOT.dirty     a complete-image relationship's dirty blocks
    ROOT/points/SNAPSHOT/SEQ.data   a differential point in time's preserved blocks (sparse)
    ROOT/points/SNAPSHOT/SEQ.map    ... and which blocks it holds
    ROOT/aim/SET/                   an AIM set's journal, dirty bitmap and destination secrets
    ROOT/clones/NAME.data           a clone's own blocks (sparse) ...
    ROOT/clones/NAME.map            ... and which blocks it holds
    ROOT/frozen/KEY.data, KEY.map   a private frozen view (a verify's point): gone at the next open
"""

import fcntl
import json
import os

from ..errors import Conflict, NotFound
from .fsutil import fsync_dir, make_dir


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


class Root:
    """The directory, held with ``flock`` for as long as it is open."""

    SUBDIRS = ("volumes", "bitmaps", "points", "aim", "aim-targets", "clones", "frozen")

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = os.path.abspath(path)
        if not create and not os.path.exists(self.db):
            raise NotFound(f"{self.path} is not an aimsnap node root (no node.db): create a volume there first")
        for sub in ("", *self.SUBDIRS):
            make_dir(os.path.join(self.path, sub))
        self._lock_fd = self._take()
        self.unclean_machine_restart = self._check_last_close()

    @property
    def db(self) -> str:
        return os.path.join(self.path, "node.db")

    def _take(self) -> int:
        fd = os.open(os.path.join(self.path, "node.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"root {self.path} is open in another aimsnap process") from None
        return fd

    def _check_last_close(self) -> bool:
        """True if the machine restarted while this root was open: the page cache was lost, so
        dirty bitmaps written ahead of data may have missed the disk and must not be trusted."""
        raw = os.pread(self._lock_fd, 4096, 0)
        try:
            last = json.loads(raw) if raw else {"clean": True}
        except ValueError:
            return True
        return not last.get("clean", True) and last.get("boot_id") != _boot_id()

    def made(self) -> None:
        """The root and the files made at open (the lock, a new node.db) are there for good, even
        if another program made the directory without syncing it."""
        fsync_dir(self.path)
        fsync_dir(os.path.dirname(self.path))

    def mark(self, *, clean: bool) -> None:
        """Record whether the root is closed cleanly (``False`` while it is open)."""
        body = json.dumps({"pid": os.getpid(), "boot_id": _boot_id(), "clean": clean}).encode()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, body, 0)
        os.fsync(self._lock_fd)

    def release(self) -> None:
        os.close(self._lock_fd)

    # -- paths ----------------------------------------------------------------------------------------
    def sub(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def volume(self, name: str) -> str:
        return self.sub("volumes", f"{name}.img")

    def dirty(self, snapshot: str) -> str:
        return self.sub("bitmaps", f"{snapshot}.dirty")

    def points(self, snapshot: str) -> str:
        return self.sub("points", snapshot)

    def point(self, snapshot: str, seq: int) -> tuple[str, str]:
        base = os.path.join(self.points(snapshot), str(seq))
        return f"{base}.data", f"{base}.map"

    def clone(self, name: str) -> tuple[str, str]:
        base = self.sub("clones", name)
        return f"{base}.data", f"{base}.map"

    def frozen(self, key: str) -> tuple[str, str]:
        base = self.sub("frozen", key)
        return f"{base}.data", f"{base}.map"

    def aim_set(self, name: str) -> str:
        return self.sub("aim", name)

    def aim_target(self, set_id: str) -> str:
        """A received AIM set's files (its secret, its change maps); ``set_id`` is checked hex."""
        return self.sub("aim-targets", set_id)
