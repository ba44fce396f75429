"""What `aimsnap status --json` says and the status page shows: every policy with its last run,
next fire and RPO against its objective, the AIM sets' problems, open alerts and the last
failures, read from the outcome store (and, in the running orchestrator, the watchdog's view of
every AIM set)."""

from __future__ import annotations

from datetime import datetime

from .alerts.conditions import rpo_state
from .store import Store, parse_iso

HEARTBEAT_FRESH = 10.0  # seconds: an orchestrator whose heartbeat is older is not running


def service_alive(store: Store, now: datetime) -> dict | None:
    svc = store.service()
    beat = svc.get("heartbeat")
    if not beat:
        return None
    return svc if (now - parse_iso(beat)).total_seconds() <= HEARTBEAT_FRESH else None


def policy_rows(store: Store, now: datetime) -> list[dict]:
    rows = []
    for sched in store.schedule():
        name = sched["policy"]
        last = store.last_run(name)
        point = store.newest_recovery_point(name)
        rpo = (now - parse_iso(point["issued_at"])).total_seconds() if point and point.get("issued_at") else None
        tested = None
        if sched["kind"] == "dr-test" and last and last["details"]:  # the point it tested, and how that went
            tested = {"point": last["details"].get("point"), "status": last["status"], "at": last["started_at"]}
        breached = rpo_state(now, store, name, sched["rpo_objective"])[2] if sched["rpo_objective"] else None
        failures = store.consecutive_failures(name)
        rows.append({"policy": name, "kind": sched["kind"], "next_fire": sched["next_fire"],
                     "last_status": last and last["status"], "last_started_at": last and last["started_at"],
                     "last_error": last and last["error"], "recovery_point": point and point["point"],
                     "recovery_point_at": point and point["issued_at"], "rpo_seconds": rpo and round(rpo, 1),
                     "rpo_objective_seconds": sched["rpo_objective"], "rpo_breached": breached,
                     "consecutive_failures": failures, "last_test": tested,
                     "state": "breached" if breached else ("failing" if failures else "ok")})
    return rows


def status(store: Store, now: datetime, aim_sets: list[dict] | None = None) -> dict:
    problems = store.aim_problems()
    alive = service_alive(store, now)
    out = {"policies": policy_rows(store, now),
           "stalled": [p["message"] for p in problems if p["kind"] == "stalled"],
           "aim_errors": [p["message"] for p in problems if p["kind"] == "aim_error"],
           "fenced": [p["message"] for p in problems if p["kind"] == "aim_fenced"],
           "orchestrator": "running" if alive else "not running",
           "alerts": [{"key": k, "rule": a["rule"], "fired_at": a["fired_at"], **a["details"]}
                      for k, a in sorted(store.open_alerts().items())],
           "failures": [{"policy": r["policy"], "at": r["started_at"], "status": r["status"], "error": r["error"]}
                        for r in store.history(limit=200) if r["status"] in ("failed", "timeout")][:10],
           "at": now.isoformat()}
    if aim_sets is not None:
        out["aim_sets"] = aim_sets
    return out
