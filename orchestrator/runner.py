"""Running one policy once, by the rules: misfire grace and catch-up, no overlap, jitter, a timeout
per run, retries with backoff; every attempt (and every skip or miss) is a row in the store."""

import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from engine import EngineError
from policies.model import Bundle, Policy

from .actions import ActionContext, ActionFailed, run_action
from .store import Store, iso

log = logging.getLogger("aimsnap.run")


class Runner:
    def __init__(self, store: Store, bundle: Callable[[], Bundle], nodes: Callable[[str], object],
                 clock: Callable[[], datetime], sleep: Callable[[float], None] | None = None) -> None:
        self.store, self.bundle, self.nodes, self.clock = store, bundle, nodes, clock
        self.stopping = threading.Event()  # set at shutdown: jitter and backoff waits end, no more retries
        self.sleep = sleep or self.stopping.wait
        self.locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def policy(self, name: str) -> Policy | None:
        return next((p for p in self.bundle().policies if p.name == name), None)

    def fire(self, name: str, scheduled_for: datetime | None, trigger: str = "schedule",
             overdue: tuple[datetime, ...] = ()) -> str | None:
        """Run ``name`` for the fire time ``scheduled_for`` (None: on demand). ``overdue`` are earlier
        fire times that never ran (downtime, suspend): they are recorded as one `missed` row.
        Returns the final status."""
        policy = self.policy(name)
        if policy is None:
            return None
        now = self.clock()
        if overdue:
            self._missed(policy, overdue, now)
        if scheduled_for is not None and (now - scheduled_for).total_seconds() > policy.misfire_grace:
            self._missed(policy, (scheduled_for,), now)
            if policy.catch_up != "once":
                return "missed"
            trigger = "catch-up"
        lock = self.locks[name]
        if not lock.acquire(blocking=False):
            self.store.record_run(name, policy.kind, trigger, "skipped", now, scheduled_for,
                                  error="the previous run of this policy is still running")
            log.info("policy %s: skipped, the previous run is still running", name)
            return "skipped"
        release = True
        try:
            if policy.jitter:
                self.sleep(random.uniform(0, policy.jitter))
            status = None
            for attempt in range(1, policy.retries + 2):
                status, release = self._attempt(policy, scheduled_for, trigger, attempt, lock)
                if status in ("ok", "timeout") or attempt > policy.retries or self.stopping.is_set():
                    break
                self.sleep(min(policy.backoff * 2 ** (attempt - 1), 3600))
            return status
        finally:
            if release:
                lock.release()

    def _missed(self, policy: Policy, due: tuple[datetime, ...], now: datetime) -> None:
        late = (now - due[-1]).total_seconds()
        what = f"{len(due)} runs due from {iso(due[0])} to {iso(due[-1])}" if len(due) > 1 else \
            f"the run due at {iso(due[-1])}"
        self.store.record_run(policy.name, policy.kind, "schedule", "missed", now, due[-1],
                              error=f"missed {what} (the last {late:.0f}s late; grace {policy.misfire_grace:.0f}s)",
                              details={"missed": len(due)})
        log.warning("policy %s: missed %s", policy.name, what)

    def _attempt(self, policy: Policy, scheduled_for: datetime | None, trigger: str, attempt: int,
                 lock: threading.Lock) -> tuple[str, bool]:
        run_id = self.store.start_run(policy.name, policy.kind, trigger, self.clock(), scheduled_for, attempt)
        ctx = ActionContext(policy, self.bundle(), self.nodes, self.store, run_id, self.clock)
        outcome: dict = {}

        def call() -> None:
            try:
                run_action(ctx)
                outcome["status"] = "ok"
            except ActionFailed as e:
                outcome["status"], outcome["error"] = e.status, str(e)
            except EngineError as e:
                outcome["status"], outcome["error"] = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the scheduler; it is recorded
                log.exception("policy %s: run failed unexpectedly", policy.name)
                outcome["status"], outcome["error"] = "failed", f"internal error: {type(e).__name__}: {e}"

        worker = threading.Thread(target=call, name=f"run-{policy.name}", daemon=True)
        worker.start()
        worker.join(policy.timeout)
        if worker.is_alive():
            self.store.finish_run(run_id, "timeout", self.clock(), f"the run did not finish within "
                                  f"{policy.timeout:g}s", ctx.details)
            log.warning("policy %s: run %d timed out", policy.name, run_id)

            def release_when_done() -> None:  # no overlap: the next run waits for this one to end
                worker.join()
                lock.release()
            threading.Thread(target=release_when_done, daemon=True).start()
            return "timeout", False
        status = outcome.get("status", "failed")
        self.store.finish_run(run_id, status, self.clock(), outcome.get("error"), ctx.details)
        log.info("policy %s: run %d %s%s", policy.name, run_id, status,
                 f": {outcome['error']}" if outcome.get("error") else "")
        return status, True
