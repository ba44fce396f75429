"""A DR site at scale: hundreds of AIM sets between two real nodes (300 here, 1,000 with
AIMSNAP_FULL=1), with a constant number of threads per node; a marker on each; a group of 100
members at one write-order point; the consistency property on a sample under concurrent writers;
SIGKILL of the destination with every set active, and nothing lost. The tests of this module
share one pair of nodes and run in order."""

import random
import threading
import time

import pytest

from orchestrator.demo.fleet import Fleet, rss_mib, threads

from ..aimpair import Pair, read_all, read_point
from ..conftest import FULL

COUNT = 1000 if FULL else 300
SIZE = 256 * 1024
BS = 4096
MAX_THREADS = 64  # per node, whatever the number of sets (the issue's target)
GROUP = 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    pair = Pair(tmp_path_factory.mktemp("scale"))
    f = Fleet(pair.src.proc, pair.dst.proc, COUNT, SIZE, journal_limit="64MiB")
    f.pair = pair
    f.create()
    yield f
    pair.stop()


def _writes(f: Fleet, volumes: list[str], rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    api = f.api(f.src)
    for _ in range(rounds):
        for v in volumes:
            api.write(v, rng.randrange(SIZE // BS) * BS, rng.randbytes(BS))


def test_every_set_replicates_and_the_threads_do_not_grow_with_them(fleet):
    fleet.wait(lambda s: s["state"] == "replicating", "replicating", timeout=300)
    _writes(fleet, fleet.volumes, 1, seed=1)
    fleet.caught_up()
    for proc in (fleet.src, fleet.dst):
        n = threads(proc.proc.pid)
        assert n <= MAX_THREADS, f"{n} threads for {COUNT} sets ({rss_mib(proc.proc.pid):.0f} MiB resident)"


def test_a_marker_on_every_set_is_applied_and_holds_the_source_content(fleet):
    results = fleet.markers(fleet.volumes, "all")
    assert {m["state"] for m in results} == {"applied"}, [m for m in results if m["state"] != "applied"][:3]
    by_set = {m["aim_set"]: m for m in results}
    src, dst = fleet.api(fleet.src), fleet.api(fleet.dst)
    for v in random.Random(2).sample(fleet.volumes, 10):  # nothing was written since: the point is the volume
        assert read_point(dst, f"{v}-dr-pit", by_set[f"{v}-aim"]["point"], SIZE) == read_all(src, v, SIZE), v


def test_a_group_of_100_members_is_one_write_order_point(fleet):
    """A writer bumps a counter on every member in turn; the group's points hold counters that
    differ by at most one from one member to the next, and never increase along the order."""
    members = fleet.volumes[:GROUP]
    src, dst = fleet.api(fleet.src), fleet.api(fleet.dst)
    dst.create_snapshot_set("g100-dr", [f"{v}-dr-pit" for v in members])
    src.replication.create_group("g100", [f"{v}-aim" for v in members])
    for v in members:  # counter 0 everywhere first: an earlier test may have left random bytes there
        src.write(v, 0, (0).to_bytes(8, "little"))
    stop, errors = threading.Event(), []

    def writer() -> None:
        api = fleet.api(fleet.src)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                for v in members:
                    api.write(v, 0, i.to_bytes(8, "little"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        gm = src.replication.issue_group_marker("g100", "g100-dr", "g")
    finally:
        stop.set()
        t.join()
    assert not errors
    done = src.replication.wait(gm["id"], 30)
    for _ in range(4):  # a long-poll lasts 30 s at most
        if done["state"] != "issued":
            break
        done = src.replication.wait(gm["id"], 30)
    assert done["state"] == "applied", done
    assert len(done["members"]) == GROUP and {m["point"] for m in done["members"]} == {done["point"]}
    counters = [int.from_bytes(dst.read_snapshot(f"{v}-dr-pit", done["point"], 0, 8), "little") for v in members]
    assert all(a - b in (0, 1) for a, b in zip(counters, counters[1:])), counters
    assert counters[0] - counters[-1] in (0, 1), counters


def test_sampled_sets_keep_the_consistency_property_under_concurrent_writers(fleet):
    """Each sampled set has a writer of its own that keeps a model of its volume and places a
    marker after each burst; every point equals the model at its marker. The other sets are
    written meanwhile too."""
    sample = random.Random(3).sample(fleet.volumes[GROUP:], 8)
    others = [v for v in fleet.volumes if v not in sample]
    failures: list[str] = []
    stop = threading.Event()

    def model_writer(v: str, seed: int) -> None:
        rng = random.Random(seed)
        src, dst = fleet.api(fleet.src), fleet.api(fleet.dst)
        model = bytearray(read_all(src, v, SIZE))
        try:
            for k in range(4):
                for _ in range(rng.randrange(5, 30)):
                    off, data = rng.randrange(SIZE // BS) * BS, rng.randbytes(rng.choice((512, BS, 3 * BS)))
                    data = data[:SIZE - off]
                    src.write(v, off, data)
                    model[off:off + len(data)] = data
                m = src.replication.wait(src.replication.issue_marker(f"{v}-aim", f"{v}-dr-pit", f"c{k}")["id"], 30)
                if m["state"] != "applied":
                    failures.append(f"{v}: marker {m}")
                elif read_point(dst, f"{v}-dr-pit", m["point"], SIZE) != bytes(model):
                    failures.append(f"{v}: point {m['point']} differs from the model")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{v}: {e!r}")

    def background() -> None:
        n = 0
        while not stop.is_set():
            _writes(fleet, others[n % len(others):][:20], 1, seed=100 + n)
            n += 20
    bg = threading.Thread(target=background)
    bg.start()
    writers = [threading.Thread(target=model_writer, args=(v, i)) for i, v in enumerate(sample)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    bg.join()
    assert not failures, failures


def test_sigkill_of_the_destination_with_every_set_active_loses_nothing(fleet):
    stop, errors = threading.Event(), []

    def writer(part: list[str], seed: int) -> None:
        try:
            rounds = 0
            while not stop.is_set() or rounds < 1:
                _writes(fleet, part, 1, seed + rounds)
                rounds += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    parts = [fleet.volumes[i::4] for i in range(4)]
    ws = [threading.Thread(target=writer, args=(p, 1000 * i)) for i, p in enumerate(parts)]
    for w in ws:
        w.start()
    time.sleep(1.0)
    fleet.pair.dst.restart()  # SIGKILL, then the same ports again
    fleet.dst = fleet.pair.dst.proc
    time.sleep(1.0)
    stop.set()
    for w in ws:
        w.join()
    assert not errors
    fleet.caught_up(timeout=300)
    src, dst = fleet.api(fleet.src), fleet.pair.dst.api
    differ = [v for v in fleet.volumes if read_all(src, v, SIZE) != read_all(dst, f"{v}-dr", SIZE)]
    assert not differ, f"{len(differ)} destination volumes differ from their source, e.g. {differ[:5]}"
    assert threads(fleet.dst.proc.pid) <= MAX_THREADS


def test_a_set_streaming_flat_out_does_not_hold_back_the_markers_of_an_idle_one(pair):
    """Fairness: while one set streams as fast as its writer can write, a marker on an idle set
    is applied within a second (each sender ships at most one chunk a turn)."""
    busy, idle = pair.replicate("busy", 256 << 20), pair.replicate("idle", 1 << 20)
    stop, errors = threading.Event(), []

    def writer() -> None:
        from engine.client.remote import RemoteNode
        api, chunk, off = RemoteNode(pair.src.proc.api, pair.src.proc.token), random.randbytes(1 << 20), 0
        try:
            while not stop.is_set():
                api.write("busy", off, chunk)
                off = (off + len(chunk)) % (256 << 20)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    latencies = []
    try:
        deadline = time.monotonic() + 30
        while pair.src.api.replication.info(busy)["queued_bytes"] == 0:  # the stream is saturated
            assert time.monotonic() < deadline, "the busy set never had a backlog"
            time.sleep(0.01)
        sent = pair.src.api.replication.info(busy)["bytes_sent"]
        for k in range(7):
            t0 = time.monotonic()
            m = pair.marker(idle, "idle-dr-pit", f"f{k}")
            latencies.append(time.monotonic() - t0)
            assert m["state"] == "applied", m
        after = pair.src.api.replication.info(busy)
        assert after["bytes_sent"] > sent  # it streamed meanwhile
    finally:
        stop.set()
        t.join()
    assert not errors
    latencies.sort()
    assert latencies[len(latencies) // 2] <= 1.0 and latencies[-1] <= 3.0, latencies


def test_many_marker_long_polls_hold_no_threads_and_the_api_stays_responsive(pair):
    """An orchestrator with hundreds of policies long-polls as many markers at once: the node
    waits for them in its event loop, not on a thread each, and answers other calls meanwhile."""
    aim = pair.replicate("lp", 1 << 20)
    pair.src.api.replication.pause(aim)  # the markers stay issued until the resume
    ids = [pair.src.api.replication.issue_marker(aim, "lp-dr-pit", f"w{k}")["id"] for k in range(100)]
    results, errors = {}, []

    def waiter(marker_id: str) -> None:
        from engine.client.remote import RemoteNode
        try:
            results[marker_id] = RemoteNode(pair.src.proc.api, pair.src.proc.token).replication.wait(marker_id, 30)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ws = [threading.Thread(target=waiter, args=(i,)) for i in ids]
    for w in ws:
        w.start()
    time.sleep(1.0)  # every waiter is in its long-poll
    t0 = time.monotonic()
    assert pair.src.api.list_volumes()
    assert time.monotonic() - t0 < 2.0  # not queued behind the waits
    assert threads(pair.src.proc.proc.pid) <= MAX_THREADS
    pair.src.api.replication.resume(aim)
    for w in ws:
        w.join(60)
    assert not errors
    assert {m["state"] for m in results.values()} == {"applied"} and len(results) == len(ids)


def test_members_suspended_at_a_group_marker_do_not_starve_the_one_still_catching_up(pair):
    """Twenty members (more than the 16 workers): nineteen reach the group marker at once and are
    suspended there while their sources keep shipping what was written after it, until the
    sockets take no more; the twentieth still has its backlog to apply. Its turns must still
    come (a sender whose socket is full parks, it does not hold a worker), and the group
    completes at one point."""
    f = Fleet(pair.src.proc, pair.dst.proc, 20, 256 << 20, prefix="m", journal_limit="1GiB")
    f.create()
    f.wait(lambda s: s["state"] == "replicating", "replicating")
    src = pair.src.api
    pair.dst.api.create_snapshot_set("m-dr", [f"{v}-dr-pit" for v in f.volumes])
    src.replication.create_group("m", [f"{v}-aim" for v in f.volumes])
    src.replication.pause(f"{f.volumes[0]}-aim")  # its backlog waits behind the pause
    chunk = random.randbytes(4 << 20)
    for off in range(0, 128 << 20, len(chunk)):
        src.write(f.volumes[0], off, chunk)
    gm = src.replication.issue_group_marker("m", "m-dr", "late")
    f.each(lambda v: [f.api(f.src).write(v, off, chunk) for off in range(0, 32 << 20, len(chunk))]
           if v != f.volumes[0] else None)  # after the marker: fills the suspended members' sockets
    src.replication.resume(f"{f.volumes[0]}-aim")
    done = src.replication.wait(gm["id"], 30)
    done = done if done["state"] != "issued" else src.replication.wait(gm["id"], 30)
    assert done["state"] == "applied", done
    assert {m["point"] for m in done["members"]} == {done["point"]}
    f.caught_up()
