"""The few file-system primitives the engine builds on: durable replace, extents, fast copy."""

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_COPY_CHUNK = 1 << 30


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: str) -> None:
    """``mkdir -p`` that survives a power cut: each directory it makes is synced into its parent
    (a new directory's name is durable only once its parent is synced)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(path):
        make_dir(parent)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
    fsync_dir(parent)  # also for one that existed: made by a process that died before syncing it


def write_new(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist) holding ``data``, durably: the file, then its name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path) or ".")


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover .tmp of another mode keeps it otherwise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def create_sparse(path: str, size: int) -> None:
    """Create a file of ``size`` bytes that occupies no blocks, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(path))


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of the allocated ranges of a sparse file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= size:
            return
        yield start, end
        pos = end


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` from one file to the same offset of another, inside
    the kernel (``copy_file_range``) where the file system allows it."""
    done = 0
    while done < length:
        n = min(length - done, _COPY_CHUNK)
        try:
            copied = os.copy_file_range(src_fd, dst_fd, n, offset + done, offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            copied = 0
        if copied == 0:  # past EOF of the source or no kernel support: copy by hand
            data = os.pread(src_fd, n, offset + done)
            data += bytes(n - len(data))
            os.pwrite(dst_fd, data, offset + done)
            copied = n
        done += copied


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range so that it reads as zeros; write zeros where punching is unsupported."""
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                         ctypes.c_long(offset), ctypes.c_long(length))
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        n = min(len(zeros), length - done)
        os.pwrite(fd, zeros[:n], offset + done)
        done += n
