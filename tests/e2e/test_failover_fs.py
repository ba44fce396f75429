"""A real host stack through a failover and a failback: an ext4 file system made and written
through nbdfuse and a loop device on the source, the source SIGKILLed with it mounted, the DR
volume promoted, replayed (fsck -p) and checked clean (fsck -n), mounted and written; then a
failback, after which the old source's volume holds DR's files."""

import contextlib
import os
import shutil
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(
    not (shutil.which("nbdfuse") and shutil.which("mkfs.ext4") and shutil.which("losetup")
         and os.geteuid() == 0 and os.path.exists("/dev/fuse")),
    reason="needs nbdfuse (libnbd-bin), e2fsprogs, util-linux, /dev/fuse and root")

SIZE = 32 << 20


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def attached(uri: str, where, readonly: bool = False):
    """The NBD export as a loop device (through nbdfuse); torn down lazily, even after its node died."""
    where.mkdir(exist_ok=True)
    fuse = subprocess.Popen(["nbdfuse", *(["-r"] if readonly else []), str(where / "disk"), uri])
    loop = None
    try:
        deadline = time.monotonic() + 20
        while not (where / "disk").exists():
            assert time.monotonic() < deadline and fuse.poll() is None, "nbdfuse did not start"
            time.sleep(0.1)
        loop = _run("losetup", "--find", "--show", *(["--read-only"] if readonly else []), str(where / "disk"))
        assert loop.returncode == 0, loop.stderr
        yield loop.stdout.strip()
    finally:
        if loop is not None and loop.returncode == 0:
            _run("losetup", "-d", loop.stdout.strip())
        _run("fusermount3", "-u", "-z", str(where))
        try:
            fuse.wait(20)
        except subprocess.TimeoutExpired:
            fuse.kill()


@contextlib.contextmanager
def mounted(device: str, mnt, options: str = "rw"):
    mnt.mkdir(exist_ok=True)
    p = _run("mount", "-o", options, device, str(mnt))
    assert p.returncode == 0, p.stderr
    try:
        yield mnt
    finally:
        _run("umount", "-l", str(mnt))


def test_ext4_through_an_unplanned_failover_and_a_failback(pair, tmp_path):
    aim = pair.replicate("v", SIZE)
    with attached(pair.src.proc.nbd_uri("v"), tmp_path / "fuse-src") as dev:
        assert _run("mkfs.ext4", "-q", "-F", dev).returncode == 0
        with mounted(dev, tmp_path / "src-mnt") as m:
            for i in range(20):
                (m / f"file{i}").write_bytes(os.urandom(64 << 10))
            (m / "hello").write_text("written at the source\n")
            assert _run("sync", "-f", str(m / "hello")).returncode == 0
            pair.wait_caught_up(aim)
            (m / "late").write_bytes(os.urandom(256 << 10))  # in flight, or not, when the source dies
            pair.src.kill()
    r = pair.dst.api.replication.failover(aim)
    assert r["state"] == "promoted"

    with attached(pair.dst.proc.nbd_uri("v-dr"), tmp_path / "fuse-dr") as dev:
        replay = _run("fsck.ext4", "-p", dev)  # the journal of a file system that was mounted when it died
        assert replay.returncode < 4, replay.stdout + replay.stderr
        check = _run("fsck.ext4", "-fn", dev)
        assert check.returncode == 0, check.stdout + check.stderr
        with mounted(dev, tmp_path / "dr-mnt") as m:
            assert (m / "hello").read_text() == "written at the source\n"
            assert all((m / f"file{i}").stat().st_size == 64 << 10 for i in range(20))
            (m / "from-dr").write_text("written at DR after the failover\n")
        pair.dst.api.flush("v-dr")

    pair.src.start()
    pair.wait_state(aim, "fenced")
    fb = pair.dst.api.replication.failback(aim)
    assert fb["blocks_to_send"] > 0
    deadline = time.monotonic() + 60
    while True:
        i = pair.dst.api.replication.info(aim)
        if i["state"] == "replicating" and i["acked_seq"] == i["last_seq"]:
            break
        assert time.monotonic() < deadline, i
        time.sleep(0.1)
    # the old source is the destination now (read-only): its volume has DR's file system
    with attached(pair.src.proc.nbd_uri("v"), tmp_path / "fuse-src2", readonly=True) as dev:
        check = _run("fsck.ext4", "-fn", dev)
        assert check.returncode == 0, check.stdout + check.stderr
        with mounted(dev, tmp_path / "src2-mnt", "ro,noload") as m:
            assert (m / "from-dr").read_text() == "written at DR after the failover\n"
            assert (m / "hello").read_text() == "written at the source\n"
