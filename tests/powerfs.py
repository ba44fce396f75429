"""A FUSE file system that loses power: the test tool of the power-loss campaign (after LazyFS,
which Jepsen uses).

It passes every operation through to a backing directory and remembers what is not durable yet,
as strictly as POSIX allows:

* file data and size: durable after ``fsync``/``fdatasync`` of that file. Until then the first
  change to each 4 KiB page saves the page's old bytes (an undo log per file, keyed by inode so
  that renames and unlinks do not lose it);
* names (create, mkdir, unlink, rmdir, rename): durable after ``fsync`` of the directory (each
  directory the operation touched). Until then the operation is in a namespace undo log; an
  unlinked or overwritten file is kept in a stash so that it can come back.

Stopping it (SIGTERM, SIGINT: libfuse ends the loop and unmounts) is the power cut: the undo logs
are applied, newest first, so the backing directory holds exactly what a machine would find after
losing power at that moment; the process prints what it reverted as one JSON line and exits.
Mount a new instance on the same backing directory to "boot" again (a fresh kernel cache too).

Run: ``python -m tests.powerfs BACKING MOUNTPOINT`` (foreground; as root, with Debian's fuse3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

try:
    import mfusepy as fuse
except (ImportError, OSError):  # no libfuse3 on this machine: missing() says so
    fuse = None

PAGE = 4096
STASH = ".powerfs-stash"  # in the backing directory, hidden from the mount
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass
class Unsynced:
    """A file's changes since its last fsync: the old bytes of each page first changed, and its size."""
    fd: int  # our own descriptor: the undo must reach the inode whatever its name is by then
    size: int
    pages: dict[int, bytes] = field(default_factory=dict)


@dataclass
class NameOp:
    """A namespace change not yet durable: undone by ``undo`` unless every directory in ``dirs``
    (by inode) is fsynced first."""
    kind: str  # create | mkdir | unlink | rmdir | rename
    path: str  # backing path (for rename: the old one)
    dirs: set[int]
    new: str = ""  # rename: the new path
    stashed: str = ""  # unlink, or rename over a file: where the old file waits
    mode: int = 0o755  # rmdir: to make it again


class PowerLossFS(fuse.Operations if fuse else object):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str) -> None:
        self.root = os.path.abspath(backing)
        self.stash = os.path.join(self.root, STASH)
        os.makedirs(self.stash, exist_ok=True)
        self._mutex = threading.Lock()  # one operation at a time: simple, and a cut sees a quiet file system
        self.files: dict[int, Unsynced] = {}
        self.names: list[NameOp] = []
        self.stashed = 0
        self.stats = {"writes": 0, "fsyncs": 0, "dir_fsyncs": 0}

    # -- helpers --------------------------------------------------------------------------------------
    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _dir_ino(self, real: str) -> int:
        return os.lstat(os.path.dirname(real)).st_ino

    def _stash(self, real: str) -> str:
        self.stashed += 1
        target = os.path.join(self.stash, str(self.stashed))
        os.rename(real, target)
        return target

    def _changing(self, fd: int, start: int, end: int) -> None:
        """Save the old bytes of the pages in [start, end) that no unsynced change saved yet."""
        st = os.fstat(fd)
        u = self.files.get(st.st_ino)
        if u is None:  # a descriptor of our own that can read (``fd`` may be write-only) and
            # reaches the inode whatever happens to its name
            u = self.files[st.st_ino] = Unsynced(os.open(f"/proc/self/fd/{fd}", os.O_RDWR), st.st_size)
        for page in range(start // PAGE, (min(end, u.size) + PAGE - 1) // PAGE):
            if page not in u.pages:
                u.pages[page] = os.pread(u.fd, PAGE, page * PAGE)

    def _synced(self, fd: int) -> None:
        u = self.files.pop(os.fstat(fd).st_ino, None)
        if u is not None:
            os.close(u.fd)

    # -- attributes and directories ------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns",
                "st_ctime_ns", "st_ino", "st_blocks")
        out = {k.removesuffix("_ns"): getattr(st, k) for k in keys}
        out["st_blksize"] = PAGE
        return out

    def readdir(self, path, fh):
        names = os.listdir(self._real(path))
        return [".", "..", *(n for n in names if not (path == "/" and n == STASH))]

    def statfs(self, path):
        s = os.statvfs(self.root)
        return {k: getattr(s, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                           "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path, uid, gid):
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._real(path), ns=times)
        return 0

    def readlink(self, path):
        return os.readlink(self._real(path))

    def mkdir(self, path, mode):
        with self._mutex:
            real = self._real(path)
            os.mkdir(real, mode)
            self.names.append(NameOp("mkdir", real, {self._dir_ino(real)}))
        return 0

    def rmdir(self, path):
        with self._mutex:
            real = self._real(path)
            mode = os.lstat(real).st_mode & 0o7777
            os.rmdir(real)
            self.names.append(NameOp("rmdir", real, {self._dir_ino(real)}, mode=mode))
        return 0

    def unlink(self, path):
        with self._mutex:
            real = self._real(path)
            self.names.append(NameOp("unlink", real, {self._dir_ino(real)}, stashed=self._stash(real)))
        return 0

    def rename(self, old, new):
        with self._mutex:
            src, dst = self._real(old), self._real(new)
            stashed = self._stash(dst) if os.path.lexists(dst) and not os.path.isdir(dst) else ""
            os.rename(src, dst)
            self.names.append(NameOp("rename", src, {self._dir_ino(src), self._dir_ino(dst)}, new=dst,
                                     stashed=stashed))
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            ino = os.lstat(self._real(path)).st_ino
            self.stats["dir_fsyncs"] += 1
            kept = []
            for op in self.names:
                op.dirs.discard(ino)
                if op.dirs:
                    kept.append(op)
                elif op.stashed:  # the old file's removal is durable: it is gone for good
                    os.unlink(op.stashed)
            self.names = kept
        return 0

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0

    # -- files --------------------------------------------------------------------------------------------
    def create(self, path, mode, flags):
        with self._mutex:
            real = self._real(path)
            existed = os.path.lexists(real)
            fd = os.open(real, (flags | os.O_CREAT) & ~os.O_TRUNC, mode)
            if not existed:
                self.names.append(NameOp("create", real, {self._dir_ino(real)}))
            if flags & os.O_TRUNC:
                self._truncate(fd, 0)
            return fd

    def open(self, path, flags):
        with self._mutex:
            fd = os.open(self._real(path), flags & ~os.O_TRUNC)
            if flags & os.O_TRUNC:
                self._truncate(fd, 0)
            return fd

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        with self._mutex:
            self._changing(fh, offset, offset + len(data))
            self.stats["writes"] += 1
            n = os.pwrite(fh, data, offset)
            if fcntl.fcntl(fh, fcntl.F_GETFL) & (os.O_SYNC | os.O_DSYNC):  # durable on return
                self._synced(fh)
            return n

    def _truncate(self, fd: int, length: int) -> None:
        self._changing(fd, length, os.fstat(fd).st_size)
        os.ftruncate(fd, length)

    def truncate(self, path, length, fh=None):
        with self._mutex:
            fd = fh if fh is not None else os.open(self._real(path), os.O_RDWR)
            try:
                self._truncate(fd, length)
            finally:
                if fh is None:
                    os.close(fd)
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        with self._mutex:
            self._changing(fh, offset, offset + size)
            if _libc.fallocate(fh, mode, ctypes.c_long(offset), ctypes.c_long(size)) != 0:
                raise fuse.FuseOSError(ctypes.get_errno())
        return 0

    def fsync(self, path, datasync, fh):
        with self._mutex:
            self.stats["fsyncs"] += 1
            self._synced(fh)  # fdatasync too: the size is needed to read the data back
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    # -- the power cut -------------------------------------------------------------------------------------
    def cut(self) -> dict:
        """Undo everything not durable, newest name change first (file data by inode, any order)."""
        with self._mutex:
            report = {**self.stats, "pages_reverted": 0, "files_reverted": 0, "names_reverted": 0}
            for u in self.files.values():
                for page, old in u.pages.items():
                    os.pwrite(u.fd, old, page * PAGE)
                os.ftruncate(u.fd, u.size)
                os.close(u.fd)
                report["pages_reverted"] += len(u.pages)
                report["files_reverted"] += 1
            self.files.clear()
            for op in reversed(self.names):
                _undo(op)
                report["names_reverted"] += 1
            self.names.clear()
            shutil.rmtree(self.stash)
            return report


def _undo(op: NameOp) -> None:
    if op.kind == "create":
        os.unlink(op.path)
    elif op.kind == "mkdir":  # what was made inside it went with it
        shutil.rmtree(op.path)
    elif op.kind == "rmdir":
        os.mkdir(op.path, op.mode)
    elif op.kind == "unlink":
        os.rename(op.stashed, op.path)
    elif op.kind == "rename":
        os.rename(op.new, op.path)
        if op.stashed:
            os.rename(op.stashed, op.new)


# -- the test side ----------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def missing() -> str | None:
    """Why this machine cannot run the file system, or None."""
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        return "needs /dev/fuse and Debian's fuse3 (installed by make deps)"
    if fuse is None:
        return "needs mfusepy and libfuse3 (pip install -e '.[test]'; make deps)"
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root (FUSE mounts, and a mount namespace per node for its boot id)"
    return None


class Mount:
    """A powerfs process over ``backing`` at ``mountpoint``: :meth:`cut` loses power, :meth:`boot`
    mounts again."""

    def __init__(self, backing: str, mountpoint: str) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        self.reports: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self.boot()

    def boot(self) -> None:
        log = open(f"{self.backing}.fs.log", "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.powerfs", self.backing, self.mountpoint],
                                         stdout=subprocess.PIPE, stderr=log, cwd=REPO)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"powerfs did not mount {self.mountpoint}: see {self.backing}.fs.log")
            time.sleep(0.02)

    def cut(self) -> dict:
        """Power off: whatever was not durable is gone. What was reverted comes back."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.proc = None
        lines = out.decode().strip().splitlines()
        assert lines, f"powerfs said nothing at its cut: see {self.backing}.fs.log"
        report = json.loads(lines[-1])
        self.reports.append(report)
        return report

    def close(self) -> None:
        if self.proc is not None:
            self.cut()


def sync_tree(path: str) -> None:
    """fsync every file and directory under ``path``, deepest first (what ``sync`` would do)."""
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(top, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_boot(directory: str) -> tuple[str, ...]:
    """A command prefix that runs a program as if on a machine that rebooted: a mount namespace of
    its own with a fresh ``/proc/sys/kernel/random/boot_id`` (what the engine reads to tell a power
    loss from a process crash)."""
    path = os.path.join(directory, f"boot-{uuid.uuid4()}")
    with open(path, "w") as f:
        f.write(f"{uuid.uuid4()}\n")
    return ("unshare", "--mount", "sh", "-c", 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"', path)


def main(argv: list[str]) -> int:
    backing, mountpoint = argv
    fs = PowerLossFS(backing)
    try:
        fuse.FUSE(fs, mountpoint, foreground=True, fsname="powerfs", subtype="powerfs")
    except RuntimeError as e:  # libfuse's fuse_main says 8 when a signal ended the loop: the cut
        if e.args != (8,):
            raise
    finally:
        print(json.dumps(fs.cut()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
