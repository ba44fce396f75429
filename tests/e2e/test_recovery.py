"""Recovery points in use, on real nodes: a writable clone of a destination point over NBD while
replication and markers go on, a SIGKILL with the clone open, and a restore on an AIM source that
the destination follows."""

import hashlib
import os
import random
import shutil
import signal
import subprocess

import pytest

from engine import Conflict

from ..aimpair import read_all, read_point
from ..cli import aimsnap

SIZE = 8 << 20
needs_nbd = pytest.mark.skipif(not (shutil.which("nbdcopy") and shutil.which("qemu-io")),
                               reason="needs libnbd-bin and qemu-utils (make deps)")


def _marker(pair, aim: str, label: str) -> dict:
    m = pair.marker(aim, "v-dr-pit", label)
    assert m["state"] == "applied", m
    return m


def _random_writes(api, rng: random.Random, n: int) -> None:
    for _ in range(n):
        api.write("v", rng.randrange(SIZE // 4096) * 4096, rng.randbytes(4096 * rng.randrange(1, 4)))


def _nbd_hash(node, export: str, tmp_path) -> str:
    out = tmp_path / f"{export}.img"
    subprocess.run(["nbdcopy", node.proc.nbd_uri(export), str(out)], check=True, capture_output=True)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


@needs_nbd
def test_a_clone_of_a_destination_point_while_replication_goes_on(pair, tmp_path):
    rng = random.Random(5)
    aim = pair.replicate("v", SIZE)
    _random_writes(pair.src.api, rng, 40)
    at_p1 = read_all(pair.src.api, "v", SIZE)
    p1 = _marker(pair, aim, "p1")["point"]
    info = pair.dst.api.create_clone("test1", f"v-dr-pit@{p1}")
    assert info["blocks_held"] == 0 and info["allocated"] == 0  # nothing copied
    assert _nbd_hash(pair.dst, "test1", tmp_path) == hashlib.sha256(at_p1).hexdigest()
    # a host writes to the clone (qemu-io, flushed at exit) while replication and markers go on
    uri = pair.dst.proc.nbd_uri("test1")
    for off in (0, 4096 * 7 + 100, SIZE - 5000):
        p = subprocess.run(["qemu-io", "-f", "raw", uri, "-c", f"write -P 0xab {off} 3000"], capture_output=True)
        assert p.returncode == 0 and b"error" not in p.stdout.lower(), p
    expected = bytearray(at_p1)
    for off in (0, 4096 * 7 + 100, SIZE - 5000):
        expected[off:off + 3000] = b"\xab" * 3000
    _random_writes(pair.src.api, rng, 40)
    at_p2 = read_all(pair.src.api, "v", SIZE)
    p2 = _marker(pair, aim, "p2")["point"]
    assert read_point(pair.dst.api, "v-dr-pit", p2, SIZE) == at_p2
    assert read_point(pair.dst.api, "v-dr-pit", p1, SIZE) == at_p1, "writing the clone changed its point"
    assert pair.dst.api.read("test1", 0, SIZE) == bytes(expected)
    # the point is held: retention and `snapshot delete` are refused, naming the clone
    res = aimsnap("--node", pair.dst.proc.api, "--token-file", pair.dst.proc.token_file,
                  "snapshot", "delete", f"v-dr-pit@{p1}")
    assert res.code == 1 and "test1" in res.err
    # SIGKILL the destination with an NBD client connected to the clone; after a restart the clone
    # (its flushed writes), the point and replication are intact
    from engine.client.nbd import NbdClient
    holder = NbdClient(pair.dst.proc.nbd, "test1")
    assert holder.read(0, 4096)[1] == bytes(expected[:4096])
    try:
        pair.dst.restart(signal.SIGKILL)
    finally:
        holder.close()
    assert pair.dst.api.read("test1", 0, SIZE) == bytes(expected)
    assert read_point(pair.dst.api, "v-dr-pit", p1, SIZE) == at_p1
    _random_writes(pair.src.api, rng, 10)
    at_p3 = read_all(pair.src.api, "v", SIZE)
    p3 = _marker(pair, aim, "p3")["point"]
    assert read_point(pair.dst.api, "v-dr-pit", p3, SIZE) == at_p3
    assert [c["name"] for c in pair.dst.api.list_clones()] == ["test1"]
    pair.dst.api.delete_clone("test1")
    pair.dst.api.delete_point("v-dr-pit", p1)  # free once its clone is gone


def test_restore_on_an_aim_source_is_replicated(pair):
    """Only the blocks changed since the point are copied; the destination follows, and the
    pre-restore point undoes it."""
    rng = random.Random(6)
    aim = pair.replicate("v", SIZE)
    pair.src.api.create_snapshot("v-pit", "v", "differential")
    _random_writes(pair.src.api, rng, 30)
    good = read_all(pair.src.api, "v", SIZE)
    pair.src.api.enable_snapshot("v-pit", "good")
    changed = {rng.randrange(SIZE // (64 << 10)) for _ in range(5)}  # 64 KiB blocks: the default
    for b in changed:
        pair.src.api.write("v", b * (64 << 10) + 100, b"a bad upgrade")
    bad = read_all(pair.src.api, "v", SIZE)
    result = pair.src.api.restore_volume("v", "v-pit@good")
    assert result["blocks"] == len(changed) and result["bytes"] == len(changed) * (64 << 10)
    assert read_all(pair.src.api, "v", SIZE) == good
    m = _marker(pair, aim, "after-restore")
    assert read_point(pair.dst.api, "v-dr-pit", m["point"], SIZE) == good
    pair.wait_caught_up(aim)
    assert read_all(pair.dst.api, "v-dr", SIZE) == good
    (undo,) = result["pre_restore_points"]
    assert undo.startswith("v-pit@pre-restore.")
    pair.src.api.restore_volume("v", undo)
    assert read_all(pair.src.api, "v", SIZE) == bad


def test_restore_refuses_while_a_host_has_the_volume_open(pair):
    pair.src.api.create_volume("v", SIZE)
    pair.src.api.create_snapshot("v-pit", "v", "differential")
    pair.src.api.enable_snapshot("v-pit", "p")
    from engine.client.nbd import NbdClient
    host = NbdClient(pair.src.proc.nbd, "v")
    try:
        with pytest.raises(Conflict, match="open by 1 NBD client"):
            pair.src.api.restore_volume("v", "v-pit@p")
        assert pair.src.api.restore_volume("v", "v-pit@p", force=True)["blocks"] == 0
    finally:
        host.close()


def test_clone_create_and_delete_on_an_8_tib_volume(tmp_path):
    """Nothing is copied whatever the size (the time is measured in bench/recovery.py)."""
    root = str(tmp_path / "n")
    assert aimsnap("--root", root, "volume", "create", "big", "--size", "8TiB").code == 0
    assert aimsnap("--root", root, "snapshot", "create", "big-pit", "--source", "big", "--type",
                   "differential").code == 0
    assert aimsnap("--root", root, "snapshot", "enable", "big-pit", "--point", "p").code == 0
    res = aimsnap("--root", root, "clone", "create", "c", "--from", "big-pit@p", "--json")
    assert res.code == 0 and res.json()["size"] == 8 << 40
    used = sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(root) for f in fs)
    assert used < 64 << 20, used  # bitmaps and metadata only
    assert aimsnap("--root", root, "clone", "delete", "c").code == 0


def test_aim_verify_through_the_cli_finds_and_repairs_corruption(pair):
    """`aim verify` on real nodes: equal while writes go on; a few bytes changed in the destination
    volume's file behind the engine's back are found (exit 1, their ranges), `--repair` fixes them,
    and the last verify shows in `aim status` and /metrics."""
    import json as _json
    import threading

    rng = random.Random(8)
    aim = pair.replicate("v", SIZE)
    _random_writes(pair.src.api, rng, 60)
    pair.wait_caught_up(aim)
    cli = ("--node", pair.src.proc.api, "--token-file", pair.src.proc.token_file)
    stop = threading.Event()
    writer = threading.Thread(target=lambda: [_random_writes(pair.src.api, random.Random(9), 1)
                                              for _ in iter(stop.is_set, True)])
    writer.start()
    try:
        res = aimsnap(*cli, "aim", "verify", aim, "--json")
    finally:
        stop.set()
        writer.join()
    assert res.code == 0, res.err
    assert res.json()["mismatched_ranges"] == 0 and res.json()["digest_bytes"] <= SIZE // 100
    pair.wait_caught_up(aim)
    path = os.path.join(pair.dst.root, "volumes", "v-dr.img")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"bit rot", 3 * (1 << 20) + 12345)
    finally:
        os.close(fd)
    found = aimsnap(*cli, "aim", "verify", aim, "--json")
    assert found.code == 1 and "differ" in found.err and found.json()["ranges"] == [3 << 20]
    fixed = aimsnap(*cli, "aim", "verify", aim, "--repair")
    assert fixed.code == 0 and "repaired 1" in fixed.text, fixed.err
    assert aimsnap(*cli, "aim", "verify", aim, "--json").json()["mismatched_ranges"] == 0
    pair.wait_caught_up(aim)
    assert read_all(pair.dst.api, "v-dr", SIZE) == read_all(pair.src.api, "v", SIZE)
    status = _json.loads(aimsnap(*cli, "aim", "status", aim, "--json").out)
    assert status["last_verify"]["state"] == "done" and status["last_verify"]["mismatched_ranges"] == 0
    table = aimsnap(*cli, "aim", "status").text
    assert "equal" in table
    metrics = pair.src.api.metrics()
    assert f'aimsnap_aim_verify_mismatched_ranges{{aim_set="{aim}"}} 0.0' in metrics
