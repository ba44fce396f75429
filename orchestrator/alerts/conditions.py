"""What is wrong now, as :class:`Condition` objects keyed by what they are about (a rule and a
policy, or a rule and an AIM set): the alert engine compares them with the alerts open."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from policies.model import Bundle

from ..store import Store, parse_iso


@dataclass(frozen=True)
class Condition:
    rule: str  # policies.model.RULES
    key: str  # rule:policy or rule:node/aim_set: one alert per key at a time
    reason: str  # one line for a person
    policy: str | None = None
    node: str | None = None
    aim_set: str | None = None
    figures: dict = field(default_factory=dict)  # rpo_seconds, rpo_objective_seconds, last_error...


def conditions(now: datetime, bundle: Bundle, store: Store, watchdog=None) -> dict[str, Condition]:
    out: list[Condition] = []
    for p in bundle.policies:
        if not p.enabled:
            continue
        if p.rpo_objective:
            c = _rpo(now, p, store)
            if c:
                out.append(c)
        last = store.last_finished_run(p.name)  # a run in progress neither fails nor clears it
        if last and last["status"] in ("failed", "timeout"):
            rule = "dr_test_failed" if p.kind == "dr-test" else "run_failed"
            out.append(Condition(rule, f"{rule}:{p.name}", f"policy {p.name}: the last run {'timed out' if last['status'] == 'timeout' else 'failed'}: "
                                 f"{last['error'] or 'no reason recorded'}", p.name, p.node, p.aim_set,
                                 {"run": last["id"], "status": last["status"], "last_error": last["error"],
                                  "consecutive_failures": store.consecutive_failures(p.name)}))
    if watchdog is not None:
        for node, name in sorted(watchdog.stalled):
            out.append(Condition("aim_stalled", f"aim_stalled:{node}/{name}", f"AIM set {name} on {node} is stalled",
                                 None, node, name))
        for (node, name), (state, reason) in sorted(watchdog.problems().items()):
            rule = "fenced" if state == "fenced" else "aim_error"
            out.append(Condition(rule, f"{rule}:{node}/{name}", f"AIM set {name} on {node}: {reason}", None, node,
                                 name, {"last_error": reason}))
    return {c.key: c for c in out}


def rpo_state(now: datetime, store: Store, policy: str, objective: float) -> tuple[float | None, dict | None, bool]:
    """(age, newest recovery point, breached) of a policy: the age of its newest point applied at the
    destination; with none yet, the time since the orchestrator started (a policy that never made
    one is late too)."""
    point = store.newest_recovery_point(policy)
    since = point["issued_at"] if point else store.service().get("started_at")
    if not since:
        return None, point, False
    age = (now - parse_iso(since)).total_seconds()
    return age, point, age > objective


def _rpo(now: datetime, p, store: Store) -> Condition | None:
    age, point, breached = rpo_state(now, store, p.name, p.rpo_objective)
    if not breached:
        return None
    what = f"its newest recovery point is {age:.0f}s old" if point else f"no recovery point in {age:.0f}s"
    return Condition("rpo_breached", f"rpo_breached:{p.name}",
                     f"policy {p.name}: {what}, over its objective of {p.rpo_objective:.0f}s", p.name, p.node,
                     p.aim_set, {"rpo_seconds": round(age, 1), "rpo_objective_seconds": p.rpo_objective,
                                 "recovery_point": point and point["point"]})
