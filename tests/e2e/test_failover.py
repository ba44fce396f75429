"""Failover and failback on real nodes: the source SIGKILLed mid-write, the destination promoted
(writable over NBD, crash-consistent or at a chosen point), the source restarted and fenced; then
a failback that ships only the union of both sides' changes and keeps the old source's divergent
state as a point."""

import hashlib
import random
import re
import shutil
import subprocess
import threading
import time

import pytest

from engine import EngineError
from engine.client.remote import RemoteNode

from ..aimpair import read_all, read_point

SIZE = 4 << 20
SLOT = 4096
needs_nbd = pytest.mark.skipif(not shutil.which("nbdcopy"), reason="needs libnbd-bin (make deps)")


class Writer:
    """One thread writing random slots of the source, in order, remembering each acknowledged write."""

    def __init__(self, side, volume: str, seed: int) -> None:
        self.api = RemoteNode(side.proc.api, side.proc.token, timeout=30)  # a client of its own: one per thread
        self.volume, self.rng = volume, random.Random(seed)
        self.acked: list[tuple[int, bytes]] = []
        self.pending: tuple[int, bytes] | None = None  # the write in flight when the node died
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            slot, data = self.rng.randrange(SIZE // SLOT), self.rng.randbytes(SLOT)
            try:
                self.api.write(self.volume, slot * SLOT, data)
            except EngineError:
                self.pending = (slot, data)  # the node died under us: this write may or may not be there
                return
            self.acked.append((slot, data))


def state_after(base: bytes, writes: list[tuple[int, bytes]], k: int) -> bytes:
    out = bytearray(base)
    for slot, data in writes[:k]:
        out[slot * SLOT:(slot + 1) * SLOT] = data
    return bytes(out)


def prefix_length(base: bytes, writes: list[tuple[int, bytes]], extra: tuple[int, bytes] | None,
                  content: bytes) -> int:
    """The k for which ``content`` is the volume after the first k writes (write order kept); -1
    if none. ``extra``: a write that may have landed unacknowledged, as the last one."""
    candidates = list(writes) + ([extra] if extra else [])
    model = bytearray(base)
    for k in range(len(candidates) + 1):
        if k:
            slot, data = candidates[k - 1]
            model[slot * SLOT:(slot + 1) * SLOT] = data
        if model == content:
            return k
    return -1


def _metric(node, name: str, labels: str) -> float | None:
    m = re.search(rf"^{name}{{{labels}}} (\S+)$", node.api.metrics(), re.M)
    return float(m.group(1)) if m else None


def _wait(predicate, timeout: float = 60, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@needs_nbd
def test_failover_after_the_source_is_killed_mid_write(pair, tmp_path):
    aim = pair.replicate("v", SIZE)
    base = read_all(pair.src.api, "v", SIZE)
    w = Writer(pair.src, "v", seed=1)
    w.thread.start()
    _wait(lambda: len(w.acked) > 150, what="the workload did not start")
    m = pair.marker(aim, "v-dr-pit", "before")
    assert m["state"] == "applied"
    _wait(lambda: len(w.acked) > 300)
    pair.src.kill()  # mid-write: the writer's last request may or may not have landed
    w.thread.join(10)

    r = pair.dst.api.replication.failover(aim)
    assert r["state"] == "promoted" and r["generation"] == 2 and r["point"] is None
    assert r["seconds"] < 2 and r["applied_seq"] > 0 and r["rpo_seconds"] is not None
    dr = read_all(pair.dst.api, "v-dr", SIZE)
    k = prefix_length(base, w.acked, w.pending, dr)
    assert k >= 0, "the promoted volume is not the source after some prefix of its writes"
    assert pair.dst.api.replication.info(aim)["state"] == "promoted"
    assert _metric(pair.dst, "aimsnap_aim_promoted", f'aim_set="{aim}"') == 1.0

    # writable over NBD under its own name: nbdcopy in, then out
    img = tmp_path / "in.img"
    new = random.Random(2).randbytes(SIZE)
    img.write_bytes(new)
    subprocess.run(["nbdcopy", str(img), pair.dst.proc.nbd_uri("v-dr")], check=True, capture_output=True)
    out = tmp_path / "out.img"
    subprocess.run(["nbdcopy", pair.dst.proc.nbd_uri("v-dr"), str(out)], check=True, capture_output=True)
    assert _sha(out.read_bytes()) == _sha(new)

    # the old source comes back: refused, fenced, and nothing it writes is applied
    pair.src.start()
    info = pair.wait_state(aim, "fenced")
    assert info["last_error"].startswith("fenced: the destination was promoted at generation 2")
    assert info["fenced"]["generation"] == 2
    pair.src.api.write("v", 0, b"\x01" * SLOT)
    time.sleep(1)
    assert pair.dst.api.read("v-dr", 0, SLOT) == new[:SLOT]
    assert _metric(pair.src, "aimsnap_aim_state", f'aim_set="{aim}",state="fenced"') == 1.0
    assert "refused a stream" in pair.dst.log()
    with pytest.raises(EngineError, match="fenced"):
        pair.src.api.replication.issue_marker(aim, "v-dr-pit")
    # a second failover is answered as the first
    assert pair.dst.api.replication.failover(aim)["already"]


def test_failover_to_a_point_and_to_the_latest_point(pair):
    aim = pair.replicate("v", SIZE)
    rng = random.Random(3)
    for _ in range(50):
        pair.src.api.write("v", rng.randrange(SIZE // SLOT) * SLOT, rng.randbytes(SLOT))
    at_m1 = read_all(pair.src.api, "v", SIZE)
    m1 = pair.marker(aim, "v-dr-pit", "m1")
    for _ in range(50):
        pair.src.api.write("v", rng.randrange(SIZE // SLOT) * SLOT, rng.randbytes(SLOT))
    at_m2 = read_all(pair.src.api, "v", SIZE)
    pair.marker(aim, "v-dr-pit", "m2")
    for _ in range(20):  # after the last marker: a rollback to it takes these back
        pair.src.api.write("v", rng.randrange(SIZE // SLOT) * SLOT, rng.randbytes(SLOT))
    pair.wait_caught_up(aim)
    live = read_all(pair.src.api, "v", SIZE)
    pair.src.kill()

    with pytest.raises(EngineError, match="not both"):
        pair.dst.api.replication.failover(aim, f"v-dr-pit@{m1['point']}", True)
    with pytest.raises(EngineError, match="does not exist"):
        pair.dst.api.replication.failover(aim, "v-dr-pit@nope")
    assert pair.dst.api.replication.info(aim)["state"] == "receiving"  # a refused failover changed nothing

    r = pair.dst.api.replication.failover(aim, None, True)  # --latest-point: m2's
    assert r["point"].startswith("v-dr-pit@m2.")
    assert read_all(pair.dst.api, "v-dr", SIZE) == at_m2
    assert r["rollback_bytes"] > 0 and r["point_source_time"]
    # what the rollback took back is kept: the pre-restore point holds the live image
    pre = [p for p in pair.dst.api.snapshot_info("v-dr-pit")["points"] if p["name"].startswith("pre-restore")]
    assert pre and read_point(pair.dst.api, "v-dr-pit", pre[-1]["name"], SIZE) == live
    # the point m1 is still there, and the volume can be restored to it as any writable volume
    pair.dst.api.restore_volume("v-dr", f"v-dr-pit@{m1['point']}")
    assert read_all(pair.dst.api, "v-dr", SIZE) == at_m1
    pair.src.start()
    pair.wait_state(aim, "fenced")


def _scatter(api, volume: str, rng: random.Random, n: int, size: int) -> set[int]:
    """``n`` writes of one 4 KiB slot each at random places; the 64 KiB blocks they touched."""
    blocks = set()
    for _ in range(n):
        off = rng.randrange(size // SLOT) * SLOT
        api.write(volume, off, rng.randbytes(SLOT))
        blocks.add(off // (64 << 10))
    return blocks


def test_failback_ships_only_what_differs_and_keeps_the_divergent_state(pair):
    size = 32 << 20  # 512 blocks of 64 KiB
    aim = pair.replicate("v", size)
    rng = random.Random(4)
    _scatter(pair.src.api, "v", rng, 200, size)
    pair.marker(aim, "v-dr-pit", "base")
    pair.wait_caught_up(aim)
    # the source goes on alone (its stream held back), the destination is failed over meanwhile:
    # both sides write, as in a split brain
    pair.src.api.replication.pause(aim)
    pair.wait_state(aim, "paused")
    at_source = _scatter(pair.src.api, "v", rng, 12, size)
    r = pair.dst.api.replication.failover(aim)
    assert r["state"] == "promoted"
    at_dr = _scatter(pair.dst.api, "v-dr", rng, 25, size)
    pair.src.api.replication.resume(aim)
    pair.wait_state(aim, "fenced")
    at_source |= _scatter(pair.src.api, "v", rng, 8, size)  # a fenced source still takes writes: kept
    source_before = read_all(pair.src.api, "v", size)
    assert pair.dst.api.replication.info(aim)["changed_blocks"] == len(at_dr)

    fb = pair.dst.api.replication.failback(aim)
    union = at_source | at_dr
    assert fb["blocks_to_send"] == len(union), fb
    assert fb["blocks_changed_here"] == len(at_dr) and fb["blocks_changed_at_source"] == len(at_source)
    rev = pair.dst.api.replication
    _wait(lambda: rev.info(aim)["state"] == "replicating" and rev.info(aim)["acked_seq"] == rev.info(aim)["last_seq"],
          what="the reverse set did not catch up")
    info = rev.info(aim)
    assert info["role"] == "source" and info["generation"] == 2
    assert info["bytes_sent"] <= 1.1 * len(union) * (64 << 10), (info["bytes_sent"], len(union))
    dr = read_all(pair.dst.api, "v-dr", size)
    assert read_all(pair.src.api, "v", size) == dr, "the old source differs from DR after the failback"
    snap, point = fb["divergent_point"].split("@")
    assert snap == "v.divergent" and point.startswith("divergent.")
    assert read_point(pair.src.api, snap, point, size) == source_before, "the divergent state is not kept"
    assert pair.src.api.replication.info(aim)["role"] == "destination"
    with pytest.raises(EngineError, match="destination of AIM set"):
        pair.src.api.write("v", 0, b"x" * SLOT)
    assert pair.dst.api.replication.failback(aim)["already"]  # idempotent

    # markers work on the reverse set, and a switchover makes the original direction primary again
    pair.src.api.create_snapshot("v-pit", "v", "differential")
    _scatter(pair.dst.api, "v-dr", rng, 10, size)
    at_marker = read_all(pair.dst.api, "v-dr", size)
    m = rev.issue_marker(aim, "v-pit", "rev")
    assert rev.wait(m["id"], 60)["state"] == "applied"
    assert read_point(pair.src.api, "v-pit", rev.show(m["id"])["point"], size) == at_marker
    so = rev.switchover(aim, 60)
    assert so["aim_sets"][0]["digests_equal"] and so["aim_sets"][0]["generation"] == 3
    assert pair.src.api.replication.info(aim)["role"] == "source"
    _scatter(pair.src.api, "v", rng, 10, size)
    pair.wait_caught_up(aim)
    assert read_all(pair.dst.api, "v-dr", size) == read_all(pair.src.api, "v", size)


class FollowingWriter(Writer):
    """Writes to whichever side is the primary: on a refusal (the fence, or a replica) it tries
    the other side. Every acknowledged write is kept in order, with the side that took it."""

    def __init__(self, pair, seed: int) -> None:
        super().__init__(pair.src, "v", seed)
        self.apis = {"v": self.api, "v-dr": RemoteNode(pair.dst.proc.api, pair.dst.proc.token, timeout=30)}
        self.refused = 0

    def run(self) -> None:
        while not self.stop.is_set():
            slot, data = self.rng.randrange(SIZE // SLOT), self.rng.randbytes(SLOT)
            while not self.stop.is_set():
                try:
                    self.apis[self.volume].write(self.volume, slot * SLOT, data)
                    self.acked.append((slot, data))
                    break
                except EngineError:  # fenced, or a replica now: the other side may take it
                    self.refused += 1
                    self.volume = "v-dr" if self.volume == "v" else "v"
                    time.sleep(0.01)


def test_switchover_and_back_under_a_workload_with_markers(pair, tmp_path):
    aim = pair.replicate("v", SIZE)
    pair.src.api.create_snapshot("v-pit", "v", "differential")  # for markers once the roles are swapped
    base = read_all(pair.src.api, "v", SIZE)
    w = FollowingWriter(pair, seed=7)
    w.thread.start()
    _wait(lambda: len(w.acked) > 100)
    m = pair.marker(aim, "v-dr-pit", "under-load")
    assert m["state"] == "applied"

    so = pair.src.api.replication.switchover(aim, 60)["aim_sets"][0]
    assert so["digests_equal"] and so["generation"] == 2 and so["bytes_compared"] == SIZE
    assert so["source_digest"] == so["destination_digest"] and len(so["source_digest"]) == 32
    assert pair.src.api.replication.info(aim)["role"] == "destination"
    assert pair.dst.api.replication.info(aim)["role"] == "source"
    _wait(lambda: w.volume == "v-dr" and len(w.acked) > 250, what="the writer did not move to the new primary")
    m = pair.dst.api.replication.issue_marker(aim, "v-pit", "reverse")
    assert pair.dst.api.replication.wait(m["id"], 60)["state"] == "applied"

    back = pair.dst.api.replication.switchover(aim, 60)["aim_sets"][0]
    assert back["digests_equal"] and back["generation"] == 3
    _wait(lambda: w.volume == "v" and len(w.acked) > 400, what="the writer did not move back")
    w.stop.set()
    w.thread.join(10)
    pair.wait_caught_up(aim)
    # zero acknowledged writes lost: the primary holds every one, in order; the replica equals it
    expected = state_after(base, w.acked, len(w.acked))
    assert read_all(pair.src.api, "v", SIZE) == expected
    assert read_all(pair.dst.api, "v-dr", SIZE) == expected
    assert w.refused > 0  # the fence was seen (and no write it refused was counted)
    assert pair.src.api.replication.info(aim)["generation"] == 3


@pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-utils (make deps)")
def test_a_switchover_that_cannot_drain_fences_writes_then_changes_nothing(pair):
    aim = pair.replicate("v", SIZE)
    pair.src.api.write("v", 0, b"a" * SLOT)
    pair.wait_caught_up(aim)
    pair.dst.kill()
    pair.src.api.write("v", SLOT, b"b" * SLOT)  # queued: the journal cannot drain
    outcome: list = []
    other = RemoteNode(pair.src.proc.api, pair.src.proc.token, timeout=60)  # a client per thread
    t = threading.Thread(target=lambda: outcome.append(_try(lambda: other.replication.switchover(aim, 3))))
    t.start()
    _wait(lambda: (pair.src.api.replication.info(aim)["switchover"] or {}).get("state") == "draining")
    with pytest.raises(EngineError, match="refuses writes: switching over"):
        pair.src.api.write("v", 0, b"c" * SLOT)
    p = subprocess.run(["qemu-io", "-f", "raw", pair.src.proc.nbd_uri("v"), "-c", "write -P 0xcd 0 4096"],
                       capture_output=True, text=True)
    assert "Operation not permitted" in p.stdout + p.stderr, p
    t.join(30)
    assert isinstance(outcome[0], EngineError) and "did not drain in time" in str(outcome[0])
    info = pair.src.api.replication.info(aim)
    assert info["role"] == "source" and info["switchover"] is None and info["generation"] == 1
    pair.src.api.write("v", 2 * SLOT, b"d" * SLOT)  # accepted again
    pair.dst.start()
    pair.wait_caught_up(aim)
    assert read_all(pair.dst.api, "v-dr", SIZE) == read_all(pair.src.api, "v", SIZE)


def _try(fn):
    try:
        return fn()
    except EngineError as e:
        return e


def test_failover_of_a_member_waiting_at_a_group_barrier(pair):
    """One member's stream waits at the group marker (the other member's is paused): its failover
    releases the wait at once, the group marker fails saying why, and no applier is left running."""
    a, b = pair.replicate("v", SIZE), pair.replicate("w", SIZE)
    pair.dst.api.create_snapshot_set("vw-set", ["v-dr-pit", "w-dr-pit"])
    pair.src.api.replication.create_group("g", [a, b])
    pair.src.api.replication.pause(b)
    pair.wait_state(b, "paused")
    g = pair.src.api.replication.issue_group_marker("g", "vw-set", "stuck")
    time.sleep(1)  # v's applier is at the barrier now, waiting for w's
    t0 = time.monotonic()
    r = pair.dst.api.replication.failover(a)
    assert r["state"] == "promoted" and time.monotonic() - t0 < 10
    m = pair.src.api.replication.wait(g["members"][0]["id"], 3)  # the source, fenced, may never hear
    pair.dst.api.write("v-dr", 0, b"after the failover" + bytes(SLOT - 18))
    time.sleep(0.5)
    assert pair.dst.api.read("v-dr", 0, 18) == b"after the failover"
    assert m["state"] in ("failed", "issued"), m  # never applied to a promoted volume
    pair.src.api.replication.resume(b)
    pair.wait_state(a, "fenced")


def test_tls_sets_switch_over_and_fail_back_encrypted(tmp_path, pki):
    """Both nodes serve their AIM port over TLS: a TLS set's reverse set is TLS too, pinned to the
    certificate the old source gave (at the claim, at the switchover), for a switchover and for a
    failback, with no certificate given by hand; where the old source serves no TLS, a
    switchover from it is refused, saying why (it would go back in plaintext)."""
    from ..aimpair import Pair
    tls = ("--aim-tls-cert", pki["server"].cert, "--aim-tls-key", pki["server"].key)
    pair = Pair(tmp_path, src={"extra": tls}, dst={"extra": tls})
    try:
        pem = open(pki["ca"].cert).read()
        pair.src.api.create_volume("v", SIZE)
        pair.dst.api.create_volume("v-dr", SIZE)
        pair.dst.api.create_snapshot("v-dr-pit", "v-dr", "differential")
        pair.src.api.replication.create("v-aim", "v", f"{pair.dst.proc.aim}/v-dr", pair.dst.proc.token, tls_ca=pem)
        pair.wait_state("v-aim", "replicating")
        rng = random.Random(9)
        _scatter(pair.src.api, "v", rng, 20, SIZE)
        so = pair.src.api.replication.switchover("v-aim", 60)["aim_sets"][0]
        assert so["digests_equal"]
        peer = [e for e in pair.dst.api.access.audit() if e["token"] == "aim-peer"]  # a peer's role request
        assert [(e["op"], e["status"], e["request"]["name"]) for e in peer] == [("aim.promote", "accepted", "v-aim")]
        rev = pair.dst.api.replication
        assert rev.info("v-aim")["tls"] and rev.info("v-aim")["role"] == "source"
        _scatter(pair.dst.api, "v-dr", rng, 20, SIZE)
        _wait(lambda: rev.info("v-aim")["acked_seq"] == rev.info("v-aim")["last_seq"], what="reverse over TLS")
        back = rev.switchover("v-aim", 60)["aim_sets"][0]
        assert back["digests_equal"] and pair.src.api.replication.info("v-aim")["tls"]
        # unplanned: the source is cut off, DR fails over and fails back, encrypted again
        pair.src.api.replication.pause("v-aim")
        pair.dst.api.replication.failover("v-aim")
        at_dr = _scatter(pair.dst.api, "v-dr", rng, 15, SIZE)
        pair.src.api.replication.resume("v-aim")
        pair.wait_state("v-aim", "fenced")
        fb = rev.failback("v-aim")
        assert fb["blocks_to_send"] >= len(at_dr) and rev.info("v-aim")["tls"]
        _wait(lambda: rev.info("v-aim")["state"] == "replicating"
              and rev.info("v-aim")["acked_seq"] == rev.info("v-aim")["last_seq"], what="failback over TLS")
        assert read_all(pair.src.api, "v", SIZE) == read_all(pair.dst.api, "v-dr", SIZE)
    finally:
        pair.stop()
    # a source whose own AIM port serves no TLS: its TLS set cannot switch over (said, nothing changed)
    one_way = Pair(tmp_path / "one-way", dst={"extra": tls})
    try:
        one_way.src.api.create_volume("w", SIZE)
        one_way.dst.api.create_volume("w-dr", SIZE)
        one_way.src.api.replication.create("w-aim", "w", f"{one_way.dst.proc.aim}/w-dr", one_way.dst.proc.token,
                                           tls_ca=open(pki["ca"].cert).read())
        one_way.wait_state("w-aim", "replicating")
        with pytest.raises(EngineError, match="would go back in plaintext"):
            one_way.src.api.replication.switchover("w-aim", 30)
        assert one_way.src.api.replication.info("w-aim")["state"] == "replicating"
    finally:
        one_way.stop()
