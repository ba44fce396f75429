"""1,000 policies firing every minute on one scheduler with a no-op action: fire lateness (p50,
p99), outcome rows written per second, a filtered `history` over 1,000,000 rows, and RSS.

    python bench/scheduler.py [--policies 1000] [--minutes 2]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

from common import emit, peak_rss_mib, timed, topology

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from orchestrator.schedule.service import Orchestrator  # noqa: E402
from orchestrator.store import Store, iso  # noqa: E402
from orchestrator.status import status  # noqa: E402


class NoopNode:
    """The no-op action: markers come back applied at once (the scheduler is what is measured)."""

    class replication:  # noqa: N801
        n = 0

        began: list[datetime] = []  # when each action reached the node (lateness of the work itself)

        @classmethod
        def issue_marker(cls, aim_set, snapshot, label=None):
            cls.n += 1
            cls.began.append(datetime.now(timezone.utc))
            now = iso(cls.began[-1])
            return {"id": cls.n, "state": "applied", "point": f"p{cls.n}", "issued_at": now, "applied_at": now}


def policy_file(work: str, n: int) -> str:
    with open(os.path.join(work, "t"), "w") as f:
        f.write("token-token-token-token\n")
    lines = topology()
    for i in range(n):
        lines += [f"  - name: p{i}", "    kind: auto-marker", "    node: prod", "    aim_set: a", "    every: 1m",
                  "    marker: {destination_snapshot: v-dr-pit}"]
    path = os.path.join(work, "p.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=2)
    ap.add_argument("--history-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aimsnap-bench-sched-")
    try:
        orch = Orchestrator([policy_file(work, args.policies)], os.path.join(work, "o.db"),
                            nodes=lambda b: lambda name: NoopNode)
        orch.start()
        time.sleep(60 * args.minutes + 5)
        orch.shutdown(wait=True)
        runs = orch.store.history(limit=10 ** 7)
        late = sorted((datetime.fromisoformat(r["started_at"].replace("Z", "+00:00"))
                       - datetime.fromisoformat(r["scheduled_for"].replace("Z", "+00:00"))).total_seconds() * 1000
                      for r in runs if r["scheduled_for"] and r["status"] == "ok")
        p50, p99 = statistics.median(late), late[int(len(late) * 0.99) - 1]
        # every policy fires at :00, so an action's lateness is its start past the minute
        work_late = sorted((t - t.replace(second=0, microsecond=0)).total_seconds() * 1000 for t in NoopNode.replication.began)
        w50, w99 = statistics.median(work_late), work_late[int(len(work_late) * 0.99) - 1]
        rss = peak_rss_mib()
        # what `aimsnap status` and the status page read: every policy's row, from this store
        status_times = [timed(lambda: status(orch.store, datetime.now(timezone.utc))) for _ in range(3)]
        assert len(status(orch.store, datetime.now(timezone.utc))["policies"]) == args.policies
        # outcome rows per second, the way runs write them (start + finish)
        store = Store(os.path.join(work, "rows.db"))
        t = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        for i in range(5000):
            rid = store.start_run(f"p{i % 100}", "group", "schedule", t, t)
            store.finish_run(rid, "ok", t)
        rows_per_s = 5000 / (time.perf_counter() - t0)
        # history over 1M rows
        big = Store(os.path.join(work, "big.db"))
        base = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with big.write_lock:
            big.db.execute("BEGIN")
            big.db.conn.executemany(
                "INSERT INTO runs (policy, kind, trigger, scheduled_for, started_at, finished_at, status) "
                "VALUES (?,?,?,?,?,?,?)",
                ((f"p{i % 1000}", "group", "schedule", iso(base + timedelta(seconds=i)),
                  iso(base + timedelta(seconds=i)), iso(base + timedelta(seconds=i + 1)),
                  "failed" if i % 50 == 0 else "ok") for i in range(args.history_rows)))
            big.db.execute("COMMIT")
        since = base + timedelta(seconds=args.history_rows - 86400)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            rows = big.history(policy="p0", since=since, status="failed")
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        recent = big.history(since=since, status="failed")
        wide = time.perf_counter() - t0
        emit("scheduler", [{"policies": args.policies, "fires": len(late), "lateness_p50_ms": p50,
                            "lateness_p99_ms": p99, "action_began_p50_ms": w50, "action_began_p99_ms": w99,
                            "rows_per_s": rows_per_s,
                            "history_1M_policy_filter_ms": statistics.median(times) * 1000,
                            "history_1M_all_failed_24h_ms": wide * 1000, "rows_returned": len(recent),
                            "status_ms": statistics.median(status_times) * 1000,
                            "rss_MiB": rss}])
        print(f"targets: p99 lateness {p99:.0f} ms (<= 100), rows/s {rows_per_s:.0f} (>= 5000), filtered history "
              f"{statistics.median(times) * 1000:.0f} ms (<= 200), RSS {rss:.0f} MiB (<= 200), status of {args.policies} "
              f"policies {statistics.median(status_times) * 1000:.0f} ms; rows for p0: {len(rows)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
