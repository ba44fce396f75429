"""Out of space at either site.

The most common real DR failure: the destination's file system fills up during replication.
The destination's root is on a small tmpfs; the source must say why within 30 s (state ``error``,
``last_error`` naming the destination's reason, in ``aim status`` and ``/metrics``), back off
(a handful of log lines a minute, not ten a second), and resume by itself once space is freed,
with the replica equal to the source."""

import os
import random
import re
import subprocess
import time

import pytest

from engine.client.nbd import NbdClient
from engine.errors import EngineError

from ..aimpair import Pair, read_all

MiB = 1 << 20
SIZE = 32 * MiB


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "dstfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: str, leave: int) -> None:
    """Write a file that leaves about ``leave`` bytes free on its file system."""
    st = os.statvfs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"\xff" * max(0, st.f_bavail * st.f_frsize - leave))


def _lines(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def test_destination_out_of_space_is_said_backs_off_and_resumes(tmp_path, small_fs):
    pair = Pair(tmp_path, dst_root=str(small_fs / "dst"))
    try:
        aim = pair.replicate("v", SIZE)
        filler = str(small_fs / "filler")
        _fill(filler, 4 * MiB)
        data = os.urandom(16 * MiB)
        for off in range(0, len(data), MiB):
            pair.src.api.write("v", off, data[off:off + MiB])
        t0 = time.monotonic()
        while True:  # said within 30 s, with the destination's reason
            info = pair.src.api.replication.info(aim)
            if info["state"] == "error":
                break
            assert time.monotonic() - t0 < 30, info
            time.sleep(0.2)
        assert re.search(r"^destination: (no space left on device|metadata: database or disk is full)",
                         info["last_error"]), info
        metrics = pair.src.api.metrics()
        assert f'aimsnap_aim_state{{aim_set="{aim}",state="error"}} 1.0' in metrics
        assert re.search(rf'aimsnap_aim_errors_total{{aim_set="{aim}"}} [1-9]', metrics)

        src_before, dst_before = pair.src.log(), pair.dst.log()
        time.sleep(20)  # it keeps failing: the retries back off
        src_lines = _lines(pair.src.log()[len(src_before):], rf"aim-send-{aim}")
        dst_lines = _lines(pair.dst.log()[len(dst_before):], "cannot apply into")
        assert src_lines <= 10 and dst_lines <= 10, (src_lines, dst_lines)
        assert pair.src.api.replication.info(aim)["state"] in ("error", "disconnected")

        os.unlink(filler)  # space comes back: replication resumes by itself
        pair.wait_caught_up(aim, timeout=60)
        assert read_all(pair.dst.api, "v-dr", SIZE) == read_all(pair.src.api, "v", SIZE)
        m = pair.marker(aim, "v-dr-pit", "after-space")
        assert m["state"] == "applied", m
        assert pair.src.api.replication.info(aim)["last_error"] is None
    finally:
        pair.stop()


def test_source_out_of_space_fails_host_writes_clearly_and_loses_nothing(tmp_path, small_fs):
    pair = Pair(tmp_path, src_root=str(small_fs / "src"))
    try:
        aim = pair.replicate("v", SIZE)
        filler = str(small_fs / "filler")
        _fill(filler, 3 * MiB)
        nbd = NbdClient(pair.src.proc.nbd, "v")
        model = bytearray(SIZE)
        errors = set()
        rng = random.Random(5)
        for i in range(64):  # 256 KiB writes until the disk is full, and some after
            off = rng.randrange(SIZE // (256 << 10)) * (256 << 10)
            data = rng.randbytes(256 << 10)
            err, _ = nbd.write(off, data)
            if err:
                errors.add(err)
            else:
                model[off:off + len(data)] = data
        assert errors == {28}, errors  # ENOSPC, said to the host as such
        try:
            pair.src.api.write("v", 0, b"x" * 4096)
            raise AssertionError("the API write did not fail")
        except EngineError as e:
            assert "507" in str(e) and "No space left on device" in str(e), e
        os.unlink(filler)
        err, _ = nbd.write(0, bytes(model[:4096]))  # space again: writes work, nothing acknowledged is lost
        assert err == 0
        assert nbd.flush()[0] == 0
        nbd.close()
        assert read_all(pair.src.api, "v", SIZE) == bytes(model)
        pair.wait_caught_up(aim, timeout=60)
        m = pair.marker(aim, "v-dr-pit", "after-full")
        assert m["state"] == "applied", m
        assert read_all(pair.dst.api, "v-dr", SIZE) == bytes(model)  # no write the host saw fail
        assert pair.src.api.replication.info(aim)["state"] == "replicating"
    finally:
        pair.stop()
