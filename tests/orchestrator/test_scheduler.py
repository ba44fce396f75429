"""The scheduler on a controlled clock (time-machine; nothing sleeps): a 15-minute policy over a
simulated day with a DST change, downtime with catch_up once and none, overlap, retries, timeout."""

import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine

from orchestrator.schedule.service import Orchestrator

POLICY = """\
version: 1
nodes:
  prod: {{api: "http://127.0.0.1:1", token_file: t, aim: "127.0.0.1:2"}}
  dr: {{api: "http://127.0.0.1:3", token_file: t, aim: "127.0.0.1:4"}}
resources:
  volumes:
    - {{node: prod, name: db01, size: 1GiB}}
    - {{node: dr, name: db01-dr, size: 1GiB}}
  snapshots:
    - {{node: dr, name: db01-dr-pit, source: db01-dr, type: differential}}
  aim_sets:
    - {{node: prod, name: a, source: db01, to: {{node: dr, volume: db01-dr}}}}
policies:
  - name: p15
    kind: auto-marker
    node: prod
    aim_set: a
    every: 15m
    timezone: {tz}
    misfire: {{grace: 5m, catch_up: {catch_up}}}
    retries: {{count: {retries}, backoff: 1s}}
    timeout: {timeout}
    marker: {{destination_snapshot: db01-dr-pit, wait: 1m}}
"""


class FakeReplication:
    """Stands in for a node's AIM marker calls: a stub is fine here because the scheduler, not the
    node, is under test (the actions are tested against real nodes in tests/e2e)."""

    def __init__(self, behaviour):
        self.behaviour, self.calls, self.n = behaviour, [], 0

    def issue_marker(self, aim_set, snapshot, label=None):
        self.n += 1
        self.calls.append(datetime.now(timezone.utc))
        return self.behaviour(self.n)

    def wait(self, marker_id, timeout):
        raise AssertionError("markers come back settled")


class FakeNode:
    def __init__(self, replication):
        self.replication = replication


def applied(n):
    return {"id": n, "state": "applied", "point": f"p{n}", "issued_at": "x", "applied_at": "y"}


def make(tmp_path, behaviour=applied, tz="UTC", catch_up="once", retries=0, timeout="10m"):
    (tmp_path / "t").write_text("token-token-token-token\n")
    (tmp_path / "t").chmod(0o600)
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.format(tz=tz, catch_up=catch_up, retries=retries, timeout=timeout))
    repl = FakeReplication(behaviour)
    orch = Orchestrator([str(f)], str(tmp_path / "o.db"), inline=True, nodes=lambda b: lambda name: FakeNode(repl),
                        sleep=lambda s: None)
    return orch, repl


def step_until(traveller, orch, end, step=timedelta(minutes=1)):
    while datetime.now(timezone.utc) < end:
        traveller.shift(step)
        orch.process_due()


def test_a_simulated_day_with_a_dst_change(tmp_path):
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 28, 22, 0, tzinfo=timezone.utc)  # Sunday 29 March, 00:00 in Berlin
    with time_machine.travel(start, tick=False) as t:
        orch, repl = make(tmp_path, tz="Europe/Berlin")
        orch.start()
        step_until(t, orch, start + timedelta(hours=24))
        orch.shutdown()
    hist = orch.store.history("p15", limit=1000)
    assert {r["status"] for r in hist} == {"ok"} and len(hist) == len(repl.calls)
    local = [datetime.fromisoformat(r["scheduled_for"].replace("Z", "+00:00")).astimezone(berlin) for r in hist]
    day = [c for c in local if c.date().isoformat() == "2026-03-29"]
    assert len(day) == 92  # a 23-hour day: 02:00-02:45 do not exist and fold into 03:00
    assert all(c.minute % 15 == 0 for c in local)
    assert all(0 <= (call - s).total_seconds() <= 60 for call, s in
               zip(repl.calls, sorted(datetime.fromisoformat(r["scheduled_for"].replace("Z", "+00:00")) for r in hist)))


def test_downtime_with_catch_up_once_and_none(tmp_path):
    t0 = datetime(2026, 6, 1, 10, 0, 30, tzinfo=timezone.utc)
    for catch_up, expect_runs in (("once", 1), ("none", 0)):
        d = tmp_path / catch_up
        d.mkdir()
        with time_machine.travel(t0, tick=False) as t:
            orch, repl = make(d, catch_up=catch_up)
            orch.start()
            step_until(t, orch, t0 + timedelta(minutes=31))
            assert len(repl.calls) == 2  # 10:15, 10:30
            orch.shutdown()
            t.shift(timedelta(hours=3, minutes=8))  # the orchestrator (or the machine) was down
            orch2, repl2 = make(d, catch_up=catch_up)
            orch2.start()
            assert len(repl2.calls) == expect_runs
            missed = orch2.store.history("p15", status="missed")
            assert len(missed) == 2  # the 11 older ones in one row; the newest, past its grace, in another
            assert "11 runs due from 2026-06-01T10:45" in missed[1]["error"] and "13:30" in missed[0]["error"]
            step_until(t, orch2, datetime.now(timezone.utc) + timedelta(minutes=16))
            assert len(repl2.calls) == expect_runs + 1  # and the schedule goes on
            orch2.shutdown()


def test_a_suspend_is_judged_by_the_wall_clock(tmp_path):
    t0 = datetime(2026, 6, 1, 10, 0, 30, tzinfo=timezone.utc)
    with time_machine.travel(t0, tick=False) as t:
        orch, repl = make(tmp_path, catch_up="none")
        orch.start()
        step_until(t, orch, t0 + timedelta(minutes=16))
        assert len(repl.calls) == 1
        t.shift(timedelta(hours=2, minutes=8))  # suspended: no timer fired in between
        orch.process_due()
        assert len(repl.calls) == 1
        missed = orch.store.history("p15", status="missed")
        assert missed[0]["scheduled_for"] == "2026-06-01T12:15:00.000Z" and missed[1]["details"]["missed"] == 7
        orch.shutdown()


def test_overlap_is_skipped_and_recorded(tmp_path):
    gate = threading.Event()

    def slow(n):
        gate.wait(10)
        return applied(n)

    with time_machine.travel(datetime(2026, 6, 1, 10, 14, tzinfo=timezone.utc), tick=False):
        orch, repl = make(tmp_path, behaviour=slow)
        orch.start()
        runner = threading.Thread(target=orch.trigger, args=("p15",))
        runner.start()
        while not repl.calls:
            pass
        assert orch.trigger("p15") == "skipped"
        gate.set()
        runner.join()
    skipped = orch.store.history("p15", status="skipped")
    assert skipped and "still running" in skipped[0]["error"]
    assert orch.store.history("p15", status="ok")


def test_retries_then_success_and_failure(tmp_path):
    def flaky(n):
        if n < 3:
            from engine import EngineError
            raise EngineError("node http://127.0.0.1:1 is unreachable: Connection refused")
        return applied(n)

    with time_machine.travel(datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc), tick=False):
        orch, repl = make(tmp_path, behaviour=flaky, retries=3)
        orch.start()
        assert orch.trigger("p15") == "ok"
    rows = list(reversed(orch.store.history("p15")))
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "failed"), (3, "ok")]
    assert "unreachable" in rows[0]["error"]
    assert orch.store.consecutive_failures("p15") == 0


def test_timeout(tmp_path):
    gate = threading.Event()

    def hang(n):
        gate.wait(30)
        return applied(n)

    orch, repl = make(tmp_path, behaviour=hang, timeout="1s")
    orch.start()
    try:
        assert orch.trigger("p15") == "timeout"
        assert orch.trigger("p15") == "skipped"  # the timed-out run still holds the policy
    finally:
        gate.set()
    row = orch.store.history("p15", status="timeout")[0]
    assert "did not finish within 1s" in row["error"]


def test_reload_refuses_a_broken_file_and_keeps_the_schedule(tmp_path):
    orch, _ = make(tmp_path)
    orch.start()
    path = tmp_path / "p.yaml"
    good = path.read_text()
    path.write_text(good.replace("every: 15m", "every: 15 minutes"))
    problems = orch.reload()
    assert problems and "15 minutes" in str(problems[0])
    assert orch.jobs["p15"].policy.every == 900
    path.write_text(good.replace("every: 15m", "every: 5m"))
    assert orch.reload() == [] and orch.jobs["p15"].policy.every == 300
    sched = orch.store.schedule()
    assert sched[0]["policy"] == "p15" and sched[0]["next_fire"]
    path.write_text(good.replace("  - name: p15", "  - name: other"))
    assert orch.reload() == [] and list(orch.jobs) == ["other"] and orch.scheduler.get_job("p15") is None
    orch.shutdown()


@pytest.mark.parametrize("status", ["failed"])
def test_a_failing_marker_fails_the_run(tmp_path, status):
    def fails(n):
        return {"id": n, "state": "failed", "error": "snapshot 'x' is not pre-configured on the destination node"}

    orch, _ = make(tmp_path, behaviour=fails)
    orch.start()
    assert orch.trigger("p15") == status
    assert "not pre-configured" in orch.store.history("p15")[0]["error"]
    assert orch.store.consecutive_failures("p15") == 1


def test_stall_watchdog(tmp_path):
    from orchestrator.store import Store
    from orchestrator.schedule.watchdog import Watchdog
    store = Store(str(tmp_path / "w.db"))
    state = {"acked_seq": 10, "queued_entries": 5, "state": "disconnected", "last_error": "Connection refused"}
    dog = Watchdog(store, lambda: [("prod", "a")], lambda n: [dict(state, name="a")], stall_after=300)
    t = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert dog.check(t) == set()
    assert dog.check(t + timedelta(seconds=299)) == set()
    assert dog.check(t + timedelta(seconds=301)) == {("prod", "a")}
    dog.check(t + timedelta(seconds=400))  # reported once
    events = list(store.db.query("SELECT kind, message FROM events"))
    assert [e["kind"] for e in events] == ["stalled"] and "Connection refused" in events[0]["message"]
    state["acked_seq"] = 11
    assert dog.check(t + timedelta(seconds=500)) == set()
    assert [e["kind"] for e in store.db.query("SELECT kind FROM events")] == ["stalled", "recovered"]
    state["queued_entries"] = 0  # idle is not stalled
    assert dog.check(t + timedelta(hours=5)) == set()
    from ..cli import aimsnap  # `history --events` is where an operator sees it
    shown = aimsnap("history", "--db", str(tmp_path / "w.db"), "--events", "--json").json()
    assert [e["kind"] for e in shown] == ["recovered", "stalled"] and shown[1]["details"]["aim_set"] == "a"
    assert "is stalled" in aimsnap("history", "--db", str(tmp_path / "w.db"), "--events").text


def test_a_fenced_aim_set_is_an_event_once_and_shows_in_status(tmp_path):
    from orchestrator.store import Store
    from orchestrator.schedule.watchdog import Watchdog
    store = Store(str(tmp_path / "w.db"))
    reason = "fenced: the destination was promoted at generation 2 on 2026-06-01T00:00:00Z (failover)"
    state = {"acked_seq": 10, "queued_entries": 3, "state": "fenced", "last_error": reason}
    dog = Watchdog(store, lambda: [("prod", "a")], lambda n: [dict(state, name="a")])
    t = datetime(2026, 6, 1, tzinfo=timezone.utc)
    dog.check(t)
    dog.check(t + timedelta(seconds=30))  # once, not at every look
    events = list(store.db.query("SELECT kind, message FROM events"))
    assert [e["kind"] for e in events] == ["aim_fenced"] and reason in events[0]["message"]
    from ..cli import aimsnap
    st = aimsnap("status", "--db", str(tmp_path / "w.db"), "--json").json()
    assert st["fenced"] and reason in st["fenced"][0]
    assert "FENCED: AIM set a on prod is fenced" in aimsnap("status", "--db", str(tmp_path / "w.db")).text


def test_watchdog_asks_each_node_once_per_round(tmp_path):
    """1,000 policies' sets on a few nodes cost a few calls a round, not one per set; an
    unreachable node skips only its own sets; a set a node does not list is skipped."""
    from engine import EngineError
    from orchestrator.store import Store
    from orchestrator.schedule.watchdog import Watchdog
    calls: list[str] = []

    def node_sets(node: str) -> list[dict]:
        calls.append(node)
        if node == "down":
            raise EngineError("node down is unreachable")
        # a destination-role entry of the same name comes after the source's, and is not the one watched
        return ([{"name": f"s{i}", "acked_seq": i, "queued_entries": 1, "state": "replicating"} for i in range(50)]
                + [{"name": "s0", "acked_seq": 999, "state": "error", "last_error": "x"}])

    watched = [(n, f"s{i}") for n in ("prod", "edge", "down") for i in range(50)] + [("prod", "gone")]
    dog = Watchdog(Store(str(tmp_path / "w.db")), lambda: watched, node_sets, stall_after=300)
    t = datetime(2026, 6, 1, tzinfo=timezone.utc)
    dog.check(t)
    assert sorted(calls) == ["down", "edge", "prod"]
    assert dog.check(t + timedelta(seconds=301)) == {(n, f"s{i}") for n in ("prod", "edge") for i in range(50)}
    assert len(calls) == 6
    assert dog.infos[("prod", "s0")]["acked_seq"] == 0 and not dog.problems()
