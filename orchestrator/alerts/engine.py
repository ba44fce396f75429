"""From conditions to notifications. An alert *fires* once when its condition starts and
*resolves* once when it ends; while it fires, a route with ``repeat`` reminds at most that often.
Open alerts live in the outcome store (a restarted orchestrator neither repeats nor forgets
them); every notification and every delivery's outcome is an event (``history --events``)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime

from engine import EngineError
from policies.model import Alerting, Receiver

from ..store import Store, iso, parse_iso
from .conditions import Condition
from .receivers import DeliveryError, send

log = logging.getLogger("aimsnap.alerts")
ATTEMPTS = 5  # a delivery is tried this often, with the waits below between
BACKOFF = (1.0, 4.0, 15.0, 60.0)


class Delivery:
    """Sends notifications, each retried with backoff, on a thread per receiver (one that is down
    delays only its own messages, in order); records every outcome. :meth:`submit` never blocks: a
    receiver that is down must not slow a run or the engine."""

    def __init__(self, store: Store, clock: Callable[[], datetime], *, sleep: Callable[[float], None] = time.sleep,
                 inline: bool = False) -> None:
        self.store, self.clock, self.sleep, self.inline = store, clock, sleep, inline
        self.workers: dict[str, tuple[queue.Queue, threading.Thread]] = {}
        self.lock = threading.Lock()

    def submit(self, receiver: Receiver, n: dict) -> None:
        if self.inline:
            self.deliver(receiver, n)
            return
        with self.lock:
            if receiver.name not in self.workers:
                q: queue.Queue[tuple[Receiver, dict] | None] = queue.Queue()
                t = threading.Thread(target=self._loop, args=(q,), name=f"alerts-{receiver.name}", daemon=True)
                self.workers[receiver.name] = (q, t)
                t.start()
            self.workers[receiver.name][0].put((receiver, n))

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, waiting at most ``timeout`` seconds in all (then give up: daemons)."""
        with self.lock:
            workers = list(self.workers.values())
            self.workers = {}
        for q, _t in workers:
            q.put(None)
        deadline = time.monotonic() + timeout
        for _q, t in workers:
            t.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, q: queue.Queue) -> None:
        while (item := q.get()) is not None:
            self.deliver(*item)

    def deliver(self, receiver: Receiver, n: dict, attempts: int = ATTEMPTS) -> bool:
        errors: list[str] = []
        for attempt in range(1, attempts + 1):
            try:
                send(receiver, n)
                break
            except (DeliveryError, EngineError) as e:
                errors.append(str(e))
                log.warning("alert %s to %s: attempt %d failed: %s", n["key"], receiver.name, attempt, e)
                if attempt < attempts:
                    self.sleep(BACKOFF[min(attempt - 1, len(BACKOFF) - 1)])
        ok = len(errors) < attempts
        self.store.event(self.clock(), "alert-delivery",
                         f"alert {n['status']} {n['key']} to {receiver.name}: " +
                         (f"delivered after {len(errors) + 1} attempt(s)" if ok else f"not delivered: {errors[-1]}"),
                         policy=n.get("policy"), details={"receiver": receiver.name, "key": n["key"],
                                                          "status": n["status"], "delivered": ok,
                                                          "attempts": len(errors) + (1 if ok else 0), "errors": errors})
        return ok


class Alerts:
    def __init__(self, store: Store, alerting: Callable[[], Alerting], delivery: Delivery) -> None:
        self.store, self.alerting, self.delivery = store, alerting, delivery

    def evaluate(self, now: datetime, found: dict[str, Condition]) -> list[dict]:
        """Compare what is wrong now with the open alerts; notify the changes. The notifications made."""
        made = []
        opened = self.store.open_alerts()
        for key, c in found.items():
            alert = opened.get(key)
            if alert is None:
                made.append(self._notify(now, c, "firing", iso(now), {}))
            else:
                made += self._remind(now, c, alert)
        for key, alert in opened.items():
            if key not in found:
                c = Condition(alert["rule"], key, **{k: alert["details"].get(k) for k in
                                                      ("reason", "policy", "node", "aim_set", "figures")})
                made.append(self._notify(now, c, "resolved", alert["fired_at"], alert["sent"]))
        return made

    def _routes(self, rule: str):
        cfg = self.alerting()
        return [(r, cfg.receivers[r.receiver]) for r in cfg.routes if rule in r.on and r.receiver in cfg.receivers]

    def _notify(self, now: datetime, c: Condition, status: str, fired_at: str, sent: dict) -> dict:
        n = notification(c, status, fired_at, iso(now) if status == "resolved" else None)
        receivers = []
        for _route, receiver in self._routes(c.rule):
            self.delivery.submit(receiver, n)
            sent[receiver.name] = iso(now)
            receivers.append(receiver.name)
        if status == "firing":
            self.store.save_alert(c.key, c.rule, fired_at, _details(c), sent)
        else:
            self.store.close_alert(c.key)
        self.store.event(now, "alert", f"{status.upper()} {c.rule}: {c.reason}", policy=c.policy,
                         details={**n, "receivers": receivers})
        return n

    def _remind(self, now: datetime, c: Condition, alert: dict) -> list[dict]:
        """Tell again the receivers whose route repeats and whose last message is that old."""
        due = [(r, rec) for r, rec in self._routes(c.rule) if r.repeat and
               (now - parse_iso(alert["sent"].get(rec.name, alert["fired_at"]))).total_seconds() >= r.repeat]
        if not due:
            if _details(c) != alert["details"]:  # the figures moved on (an RPO growing): kept current
                self.store.save_alert(c.key, c.rule, alert["fired_at"], _details(c), alert["sent"])
            return []
        n = notification(c, "firing", alert["fired_at"], None, repeat=True)
        for _r, receiver in due:
            self.delivery.submit(receiver, n)
            alert["sent"][receiver.name] = iso(now)
        self.store.save_alert(c.key, c.rule, alert["fired_at"], _details(c), alert["sent"])
        self.store.event(now, "alert", f"FIRING (again) {c.rule}: {c.reason}", policy=c.policy,
                         details={**n, "receivers": [rec.name for _r, rec in due]})
        return [n]


def _details(c: Condition) -> dict:
    return {"reason": c.reason, "policy": c.policy, "node": c.node, "aim_set": c.aim_set, "figures": c.figures}


def notification(c: Condition, status: str, fired_at: str, resolved_at: str | None, repeat: bool = False) -> dict:
    """One message about an alert: what every receiver is sent (README, "Alerts")."""
    return {"status": status, "rule": c.rule, "key": c.key, "reason": c.reason, "policy": c.policy, "node": c.node,
            "aim_set": c.aim_set, "figures": c.figures, "fired_at": fired_at, "resolved_at": resolved_at,
            "repeat": repeat}
