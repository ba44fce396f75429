"""`aimsnap run` as a real process with two real nodes: scheduled runs, outcomes in SQLite,
status and history, trigger, reload, SIGKILL and SIGTERM."""

import signal
import subprocess
import sys
import time

from ..cli import aimsnap
from .test_apply import policy_file


def fast_policies(pair, tmp_path) -> str:
    path = policy_file(pair, tmp_path)
    text = open(path).read().replace("every: 15m", "every: 2s").replace("every: 1h", "every: 3s")
    open(path, "w").write(text)
    return path


def start_run(path, db, log):
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", path, "--db", db],
                            stdout=log, stderr=subprocess.STDOUT)


def stamp() -> str:
    """Now, in the store's own format, so that comparisons with started_at are exact."""
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hist(db, *args):
    res = aimsnap("history", "--db", db, "--json", *args)
    return res.json() if res.code == 0 else []


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_run_status_history_and_recovery_points(pair, tmp_path):
    path = fast_policies(pair, tmp_path)
    assert aimsnap("apply", path).code == 0
    pair.wait_state("db01-ci-to-dr", "replicating")
    pair.wait_state("erp-to-dr", "replicating")
    db = str(tmp_path / "o.db")
    log = open(tmp_path / "run.log", "wb")
    proc = start_run(path, db, log)
    try:
        pair.src.api.write("db01", 0, b"content one")
        pair.src.api.write("erp", 0, b"erp one")

        def applied_after(t0):
            rows = hist(db, "--policy", "db01-15m", "--status", "ok")
            return [r for r in rows if r["started_at"] > t0]
        t0 = stamp()
        run = wait_for(lambda: applied_after(t0))[0]
        point = run["details"]["marker"]["point"]
        assert pair.dst.api.read_snapshot("db01-dr-pit", point, 0, 11) == b"content one"
        group = wait_for(lambda: hist(db, "--policy", "app", "--status", "ok"))
        gpoint = group[0]["details"]["marker"]["point"]
        assert pair.dst.api.read_snapshot("erp-dr-pit", gpoint, 0, 7) == b"erp one"
        st = aimsnap("status", "--db", db, "--json").json()
        assert st["orchestrator"] == "running"
        by = {p["policy"]: p for p in st["policies"]}
        assert by["db01-15m"]["last_status"] in ("ok", "running") and by["db01-15m"]["recovery_point"]
        assert by["db01-15m"]["rpo_seconds"] < 60 and by["db01-15m"]["next_fire"]
        # trigger through the running orchestrator
        res = aimsnap("trigger", "app", "--db", db)
        assert res.code == 0 and "running orchestrator" in res.text
        wait_for(lambda: any(r["trigger"] == "manual" for r in hist(db, "--policy", "app")))
        # reload: a broken file is refused and recorded, a good one is taken
        good = open(path).read()
        open(path, "w").write(good.replace("every: 3s", "every: 3 seconds"))
        assert aimsnap("reload", "--db", db).code == 0
        from orchestrator.store import Store
        events = lambda: [e["kind"] for e in Store(db).db.query("SELECT kind FROM events ORDER BY id")]  # noqa: E731
        wait_for(lambda: "reload-refused" in events())
        open(path, "w").write(good)
        assert aimsnap("reload", "--db", db).code == 0
        wait_for(lambda: "reload" in events())
        # SIGKILL mid-run, restart: left-running rows become interrupted, and runs succeed again
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_run(path, db, log)
        t1 = stamp()
        wait_for(lambda: applied_after(t1))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    rows = hist(db)
    assert not [r for r in rows if r["status"] == "running"], "a stopped orchestrator left runs running"
    assert {r["status"] for r in rows} <= {"ok", "interrupted", "skipped", "missed"}


def running_site(pair, tmp_path, db01_marker: str, db01_extra: str):
    """The fast policies with db01-15m's marker (and more options) replaced, applied, and an
    orchestrator running them: (policy file, store, log, process)."""
    path = fast_policies(pair, tmp_path)
    text = open(path).read().replace("marker: {destination_snapshot: db01-dr-pit}",
                                     f"marker: {db01_marker}\n    {db01_extra}")
    open(path, "w").write(text)
    assert aimsnap("apply", path).code == 0
    pair.wait_state("db01-ci-to-dr", "replicating")
    db = str(tmp_path / "o.db")
    log = open(tmp_path / "run.log", "wb")
    return path, db, log, start_run(path, db, log)


def test_destination_down_then_back_prune_and_report(pair, tmp_path):
    path, db, log, proc = running_site(pair, tmp_path, "{destination_snapshot: db01-dr-pit, wait: 2s}",
                                       "retain: {last: 2, min: 2}\n    retries: {count: 0}")
    try:
        wait_for(lambda: len(hist(db, "--policy", "db01-15m", "--status", "ok")) >= 3)
        pair.dst.proc.stop(signal.SIGKILL)
        t_down = stamp()
        bad = wait_for(lambda: [r for r in hist(db, "--policy", "db01-15m") if r["started_at"] > t_down
                                and r["status"] in ("failed", "timeout")])
        assert "not applied within 2s" in bad[0]["error"]
        rpo_1 = aimsnap("status", "--db", db, "--json").json()["policies"]
        time.sleep(3)
        rpo_2 = aimsnap("status", "--db", db, "--json").json()["policies"]
        by1, by2 = ({p["policy"]: p for p in r} for r in (rpo_1, rpo_2))
        assert by2["db01-15m"]["rpo_seconds"] > by1["db01-15m"]["rpo_seconds"] >= 2  # the RPO grows
        assert by2["db01-15m"]["consecutive_failures"] >= 1
        pair.dst.restart()  # the node comes back on the same ports; nobody touches the orchestrator
        t_up = stamp()
        wait_for(lambda: [r for r in hist(db, "--policy", "db01-15m", "--status", "ok") if r["started_at"] > t_up])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # retention ran after each successful run; a marker applied after its run gave up waiting (2 s)
    # may leave one more point, which `prune` removes. The group policy's points in the same
    # snapshot (app.*, no retention) are not db01-15m's to delete.
    def points(prefix):
        return [p["name"] for p in pair.dst.api.snapshot_info("db01-dr-pit")["points"] if p["name"].startswith(prefix)]
    mine, theirs = points("db01-15m."), points("app.")
    assert len(mine) >= 2 and theirs
    pruned = aimsnap("prune", "--db", db, "--json", path)
    assert pruned.code == 0 and sorted(r["point"] for r in pruned.json()) == sorted(mine)[:-2]
    assert points("db01-15m.") == sorted(mine)[-2:] and points("app.") == theirs
    dry = aimsnap("prune", "--dry-run", "--db", db, "--json", path)
    assert dry.code == 0 and dry.json() == []
    out = tmp_path / "report.html"
    assert aimsnap("report", "--db", db, "--html", str(out)).code == 0
    page = out.read_text()
    assert "<svg" in page and "db01-15m" in page and "worst RPO" in page and "<script" not in page


def test_sigkill_mid_run_is_recorded_interrupted_and_the_next_run_succeeds(pair, tmp_path):
    """The run is caught in its quiesce hook (a 2 s sleep) when the orchestrator is killed."""
    path, db, log, proc = running_site(pair, tmp_path, "{destination_snapshot: db01-dr-pit}",
                                       "quiesce: {pre: [/bin/sleep, '2']}")
    try:
        running = wait_for(lambda: [r for r in hist(db, "--policy", "db01-15m") if r["status"] == "running"])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert hist(db, "--policy", "db01-15m", "--status", "running")  # what the killed process left
        proc = start_run(path, db, log)
        t1 = stamp()
        wait_for(lambda: [r for r in hist(db, "--policy", "db01-15m", "--status", "ok") if r["started_at"] > t1])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    killed = next(r for r in hist(db, "--policy", "db01-15m") if r["id"] == running[0]["id"])
    assert killed["status"] == "interrupted" and "orchestrator stopped" in killed["error"]
    from orchestrator.store import Store
    events = [e["kind"] for e in Store(db).db.query("SELECT kind FROM events")]
    assert "interrupted" in events


def test_reload_and_shutdown_wait_for_a_manual_run_on_its_marker(pair, tmp_path):
    """A manual run long-polls its marker (the AIM set is paused): a reload must not cut its
    connection, and SIGTERM waits for it to end; resumed, it ends ok and the process exits 0."""
    path = policy_file(pair, tmp_path)
    assert aimsnap("apply", path).code == 0
    pair.wait_state("db01-ci-to-dr", "replicating")
    db = str(tmp_path / "o.db")
    log = open(tmp_path / "run.log", "wb")
    proc = start_run(path, db, log)
    try:
        def serving():
            res = aimsnap("status", "--db", db, "--json")
            return res.code == 0 and res.json()["orchestrator"] == "running"
        wait_for(serving)
        pair.src.api.replication.pause("db01-ci-to-dr")
        assert aimsnap("trigger", "db01-15m", "--db", db).code == 0
        wait_for(lambda: [m for m in pair.src.api.replication.markers("db01-ci-to-dr") if m["state"] == "issued"])
        assert aimsnap("reload", "--db", db).code == 0
        from orchestrator.store import Store
        wait_for(lambda: "reload" in [e["kind"] for e in Store(db).db.query("SELECT kind FROM events")])
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None, "the orchestrator stopped before its manual run ended"
        pair.src.api.replication.resume("db01-ci-to-dr")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    manual = [r for r in hist(db, "--policy", "db01-15m") if r["trigger"] == "manual"]
    assert [r["status"] for r in manual] == ["ok"], (manual, open(tmp_path / "run.log").read()[-3000:])
