"""Faults during role changes: a SIGKILL of either node at a random moment of a switchover, of a
failover or of a failback. Each step, run again after the restart, completes or is refused with a
reason; at no moment are two sides writable at one generation; a switchover loses no
acknowledged write, and after a failback the two sides are equal."""

import random
import threading
import time

from engine import EngineError
from engine.client.remote import RemoteNode

from ..aimpair import read_all
from ..tcpproxy import Proxy
from ..conftest import FULL

SIZE = 2 << 20
SLOT = 4096
ROUNDS = 16 if FULL else 4


class Sides:
    """Which node is the set's source now, and a model of the primary's content."""

    def __init__(self, pair, aim: str, seed: int) -> None:
        self.pair, self.aim, self.rng = pair, aim, random.Random(seed)
        self.nodes = {"src": (pair.src, "v"), "dst": (pair.dst, "v-dr")}
        self.primary = "src"
        self.model = bytearray(SIZE)

    def other(self, side: str) -> str:
        return "dst" if side == "src" else "src"

    def write(self, n: int) -> None:
        node, vol = self.nodes[self.primary]
        for _ in range(n):
            slot, data = self.rng.randrange(SIZE // SLOT), self.rng.randbytes(SLOT)
            node.api.write(vol, slot * SLOT, data)
            self.model[slot * SLOT:(slot + 1) * SLOT] = data

    def info(self, side: str) -> dict:
        return self.nodes[side][0].api.replication.info(self.aim)

    def check_one_writable_per_generation(self) -> None:
        seen: dict[int, str] = {}
        for side in self.nodes:
            i = self.info(side)
            writable = i["role"] == "source" and i["state"] != "fenced" or i.get("writable")
            if writable:
                assert i["generation"] not in seen, f"two writable primaries at generation {i['generation']}: {i}"
                seen[i["generation"]] = side

    def caught_up(self) -> None:
        node, _vol = self.nodes[self.primary]
        deadline = time.monotonic() + 60
        while True:
            i = node.api.replication.info(self.aim)
            if i["state"] == "replicating" and i["acked_seq"] == i["last_seq"] and not i["queued_entries"]:
                return
            assert time.monotonic() < deadline, i
            time.sleep(0.05)

    def equal(self) -> None:
        self.caught_up()
        for side, (node, vol) in self.nodes.items():
            assert read_all(node.api, vol, SIZE) == bytes(self.model), f"{side} differs from the model"


def _with_kill(sides: Sides, where: str, call, rng: random.Random) -> str:
    """Run ``call(client)`` on ``where``'s node while one of the two nodes is SIGKILLed at a
    random moment; restart it. 'done', or the reason it failed."""
    victim = sides.nodes[rng.choice(["src", "dst"])][0]
    outcome = _with_fault(sides, where, call, rng, victim.kill)
    victim.start()
    return outcome


def _with_fault(sides: Sides, where: str, call, rng: random.Random, fault, window: float = 0.4) -> str:
    """Run ``call(client)`` on ``where``'s node with ``fault()`` at a random moment of its first
    ``window`` seconds."""
    node, _ = sides.nodes[where]
    client = RemoteNode(node.proc.api, node.proc.token, timeout=120)  # its own: the main thread's is not shared
    outcome: list[str] = []

    def run() -> None:
        try:
            call(client)
            outcome.append("done")
        except EngineError as e:
            outcome.append(str(e))
    t = threading.Thread(target=run)
    t.start()
    time.sleep(rng.uniform(0.0, window))
    fault()
    t.join(150)
    client.close()
    assert outcome, "the step hung"
    return outcome[0]


def _until_done(sides: Sides, where: str, call, what: str) -> None:
    """Run the step again until it completes: each failure must say why."""
    node, _ = sides.nodes[where]
    errors = []
    for _ in range(40):
        try:
            call(node.api)
            return
        except EngineError as e:
            assert str(e), f"{what} failed without a reason"
            errors.append(str(e))
            time.sleep(0.25)
    raise AssertionError(f"{what} never completed: {errors[-3:]}\n{sides.pair.src.log()[-3000:]}\n"
                         f"{sides.pair.dst.log()[-3000:]}")


def test_sigkill_during_switchovers(pair):
    aim = pair.replicate("v", SIZE)
    sides = Sides(pair, aim, seed=11)
    rng = random.Random(12)
    for i in range(ROUNDS):
        sides.write(rng.randrange(5, 40))
        where = sides.primary
        _with_kill(sides, where, lambda c: c.replication.switchover(aim, 30), rng)
        sides.check_one_writable_per_generation()
        _until_done(sides, where, lambda c: c.replication.switchover(aim, 30), f"switchover {i}")
        sides.primary = sides.other(where)
        assert sides.info(sides.primary)["role"] == "source", f"round {i}"
        sides.check_one_writable_per_generation()
        sides.equal()  # not one acknowledged write lost


def test_sigkill_during_failovers_and_failbacks(pair):
    aim = pair.replicate("v", SIZE)
    sides = Sides(pair, aim, seed=21)
    rng = random.Random(22)
    for i in range(ROUNDS):
        sides.write(rng.randrange(5, 40))
        sides.caught_up()
        dest = sides.other(sides.primary)
        _with_kill(sides, dest, lambda c: c.replication.failover(aim), rng)
        _until_done(sides, dest, lambda c: c.replication.failover(aim), f"failover {i}")
        old, sides.primary = sides.primary, dest
        sides.check_one_writable_per_generation()
        # the model follows the new primary: what the old one had not shipped is not there
        node, vol = sides.nodes[dest]
        sides.model = bytearray(read_all(node.api, vol, SIZE))
        sides.write(rng.randrange(5, 40))
        _with_kill(sides, dest, lambda c: c.replication.failback(aim), rng)
        _until_done(sides, dest, lambda c: c.replication.failback(aim), f"failback {i}")
        assert sides.info(old)["role"] == "destination" and sides.info(dest)["role"] == "source"
        sides.check_one_writable_per_generation()
        sides.equal()


def test_link_cuts_during_switchovers(pair):
    """The source reaches the destination through a proxy that cuts every connection at a random
    moment of the switchover (its drain, its verify, its promote request or the answer): the
    switchover, run again, completes, and nothing acknowledged is lost. The reverse set reaches the
    old source at the port it announced (no proxy), so each round makes the set anew through it."""
    proxy = Proxy(pair.dst.proc.aim, seed=31)
    try:
        aim = pair.replicate("v", SIZE, to=proxy.address)
        sides = Sides(pair, aim, seed=32)
        rng = random.Random(33)
        for i in range(ROUNDS):
            if i:
                pair.src.api.replication.create(aim, "v", f"{proxy.address}/v-dr", pair.dst.proc.token)
                pair.wait_state(aim, "replicating")
            sides.write(rng.randrange(5, 40))
            dropped = proxy.dropped
            _with_fault(sides, "src", lambda c: c.replication.switchover(aim, 30), rng, proxy.drop, 0.15)
            assert proxy.dropped == dropped + 1
            sides.check_one_writable_per_generation()
            _until_done(sides, "src", lambda c: c.replication.switchover(aim, 30), f"switchover {i}")
            sides.primary = "dst"
            sides.equal()
            _until_done(sides, "dst", lambda c: c.replication.switchover(aim, 30), f"switchover back {i}")
            sides.primary = "src"
            sides.check_one_writable_per_generation()
            sides.equal()
            pair.src.api.replication.delete(aim)  # releases the destination volume for the next round
    finally:
        proxy.close()


def test_link_cuts_during_failbacks(pair):
    """The failback reaches the old source through a proxy (``--source``) that cuts every
    connection at a random moment (its request, the divergent blocks' answer, the reverse resync):
    run again, it completes, and the two sides are equal."""
    proxy = Proxy(pair.src.proc.aim, seed=41)
    try:
        aim = pair.replicate("v", SIZE)
        sides = Sides(pair, aim, seed=42)
        rng = random.Random(43)
        for i in range(ROUNDS):
            sides.write(rng.randrange(5, 40))
            sides.caught_up()
            _until_done(sides, "dst", lambda c: c.replication.failover(aim), f"failover {i}")
            sides.primary = "dst"
            sides.model = bytearray(read_all(pair.dst.api, "v-dr", SIZE))
            sides.write(rng.randrange(5, 40))
            dropped = proxy.dropped
            _with_fault(sides, "dst", lambda c: c.replication.failback(aim, proxy.address), rng, proxy.drop, 0.15)
            assert proxy.dropped == dropped + 1
            _until_done(sides, "dst", lambda c: c.replication.failback(aim, proxy.address), f"failback {i}")
            sides.check_one_writable_per_generation()
            sides.equal()
            _until_done(sides, "dst", lambda c: c.replication.switchover(aim, 30), f"switchover back {i}")
            sides.primary = "src"
            sides.check_one_writable_per_generation()
            sides.equal()
    finally:
        proxy.close()
