import threading
from datetime import datetime, timedelta, timezone

from orchestrator.store import MIGRATIONS, Store

T = datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc)


def test_runs_markers_history_and_status(tmp_path):
    s = Store(str(tmp_path / "o.db"))
    r1 = s.start_run("db01-15m", "source-snapshot", "schedule", T, scheduled_for=T)
    s.record_marker(r1, "db01-15m", "prod", {"id": 7, "aim_set": "a", "issued_at": "2026-11-29T03:00:01Z",
                                              "applied_at": "2026-11-29T03:00:02Z", "state": "applied",
                                              "snapshot": "db01-dr-pit", "point": "p1"})
    s.finish_run(r1, "ok", T + timedelta(seconds=2), details={"blocks": 10, "bytes": 655360})
    r2 = s.start_run("db01-15m", "source-snapshot", "schedule", T + timedelta(minutes=15))
    s.finish_run(r2, "failed", T + timedelta(minutes=15, seconds=1), error="node prod is unreachable")
    s.record_run("db01-15m", "source-snapshot", "schedule", "skipped", T + timedelta(minutes=16),
                 error="the previous run is still running")
    assert [r["status"] for r in s.history("db01-15m")] == ["skipped", "failed", "ok"]
    assert s.history(status="failed")[0]["error"] == "node prod is unreachable"
    assert s.history(since=T + timedelta(minutes=10), status="ok") == []
    assert s.history("db01-15m", status="ok")[0]["details"] == {"blocks": 10, "bytes": 655360}
    assert s.consecutive_failures("db01-15m") == 1
    assert s.newest_recovery_point("db01-15m")["point"] == "p1"


def test_interrupted_and_reopen_migrates_once(tmp_path):
    path = str(tmp_path / "o.db")
    s = Store(path)
    s.start_run("p", "group", "schedule", T)
    s2 = Store(path)  # a restarted orchestrator
    assert s2.interrupt_running(T + timedelta(minutes=1)) == 1
    assert s2.history("p")[0]["status"] == "interrupted"
    assert s2.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert s2.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_writers(tmp_path):
    s = Store(str(tmp_path / "o.db"))

    def work(n):
        for i in range(200):
            s.record_run(f"p{n}", "group", "schedule", "ok", T + timedelta(seconds=i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s.history(limit=10000)) == 800
    reader = Store(str(tmp_path / "o.db"))  # another process's view
    assert len(reader.history("p3", limit=10000)) == 200
