"""Running one policy once, by the rules: misfire grace and catch-up, no overlap, jitter, a timeout
per run, retries with backoff; every attempt (and every skip or miss) is a row in the store.

A fire is two steps. :meth:`Runner.admit` decides at the fire time what happens (missed, skipped,
or runs: the policy's lock taken, the start row prepared) and costs microseconds, so the scheduler's
thread does it for every due job at once; the rows of many admissions are written in one
transaction. :meth:`Runner.execute` then does the run, on a pool thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from engine import EngineError
from policies.model import Bundle, Policy

from ..actions import ActionContext, ActionFailed, run_action
from ..store import RunRow, Store, iso

log = logging.getLogger("aimsnap.run")


@dataclass
class Admission:
    """What a fire decided. ``rows`` are written before ``execute`` (the start row last)."""

    policy: Policy
    scheduled_for: datetime | None
    trigger: str
    status: str | None = None  # the outcome when it does not run: missed or skipped
    lock: threading.Lock | None = None  # held when it runs
    rows: list[RunRow] = field(default_factory=list)
    run_id: int | None = None  # the first attempt's start row, once written

    @property
    def runs(self) -> bool:
        return self.lock is not None

    @property
    def starts(self) -> bool:
        """The last row is the first attempt's start row (with jitter the run starts later)."""
        return self.runs and not self.policy.jitter


class Runner:
    def __init__(self, store: Store, bundle: Callable[[], Bundle], nodes: Callable[[str], object],
                 clock: Callable[[], datetime], sleep: Callable[[float], None] | None = None) -> None:
        self.store, self.bundle, self.nodes, self.clock = store, bundle, nodes, clock
        self.stopping = threading.Event()  # set at shutdown: jitter and backoff waits end, no more retries
        self.sleep = sleep or self.stopping.wait
        self.locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._index: dict[str, Policy] = {}
        self._indexed: Bundle | None = None  # the bundle _index was built from (a reload brings a new one)
        self._timed_out: list[threading.Thread] = []  # runs past their timeout, still ending
        self._timed_out_lock = threading.Lock()

    def policy(self, name: str) -> Policy | None:
        bundle = self.bundle()
        if self._indexed is not bundle:
            self._index, self._indexed = {p.name: p for p in bundle.policies}, bundle
        return self._index.get(name)

    def fire(self, name: str, scheduled_for: datetime | None, trigger: str = "schedule",
             overdue: tuple[datetime, ...] = ()) -> str | None:
        """Run ``name`` for the fire time ``scheduled_for`` (None: on demand), here and now.
        Returns the final status."""
        adm = self.admit(name, scheduled_for, trigger, overdue)
        if adm is None:
            return None
        self.write([adm])
        return self.execute(adm) if adm.runs else adm.status

    def admit(self, name: str, scheduled_for: datetime | None, trigger: str = "schedule",
              overdue: tuple[datetime, ...] = ()) -> Admission | None:
        """Decide the fire of ``name`` at ``scheduled_for``. ``overdue`` are earlier fire times that
        never ran (downtime, suspend): one `missed` row. Writes nothing (see :meth:`write`)."""
        policy = self.policy(name)
        if policy is None:
            return None
        now = self.clock()
        adm = Admission(policy, scheduled_for, trigger)
        if overdue:
            adm.rows.append(self._missed(policy, overdue, now))
        if scheduled_for is not None and (now - scheduled_for).total_seconds() > policy.misfire_grace:
            adm.rows.append(self._missed(policy, (scheduled_for,), now))
            if policy.catch_up != "once":
                adm.status = "missed"
                return adm
            adm.trigger = "catch-up"
        lock = self.locks[name]
        if not lock.acquire(blocking=False):
            adm.rows.append(RunRow(name, policy.kind, adm.trigger, "skipped", now, scheduled_for,
                                   error="the previous run of this policy is still running"))
            log.info("policy %s: skipped, the previous run is still running", name)
            adm.status = "skipped"
            return adm
        adm.lock = lock
        if adm.starts:
            adm.rows.append(RunRow(name, policy.kind, adm.trigger, "running", now, scheduled_for))
        return adm

    def write(self, admissions: list[Admission], schedule: list[tuple[str, str | None]] = ()) -> None:
        """The rows of ``admissions`` in one transaction (with the policies' next fire times)."""
        rows = [r for a in admissions for r in a.rows]
        ids = self.store.insert_runs(rows, schedule, self.clock())
        end = 0
        for a in admissions:
            end += len(a.rows)
            if a.starts:
                a.run_id = ids[end - 1]

    def execute(self, adm: Admission) -> str:
        """The run an admission let through: attempts, retries, then the policy's lock is released."""
        policy, release = adm.policy, True
        try:
            if policy.jitter:
                self.sleep(random.uniform(0, policy.jitter))
            status = "failed"
            for attempt in range(1, policy.retries + 2):
                run_id = adm.run_id if attempt == 1 else None
                status, release = self._attempt(policy, adm.scheduled_for, adm.trigger, attempt, adm.lock, run_id)
                if status in ("ok", "timeout") or attempt > policy.retries or self.stopping.is_set():
                    break
                self.sleep(min(policy.backoff * 2 ** (attempt - 1), 3600))
            return status
        finally:
            if release:
                adm.lock.release()  # type: ignore[union-attr]

    def join_timed_out(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` s in all for runs that outlived their timeout; the policies of
        those still running (daemon threads: they end with the process)."""
        deadline = time.monotonic() + timeout
        with self._timed_out_lock:
            threads = list(self._timed_out)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name.removeprefix("timed-out-") for t in threads if t.is_alive()]

    def _missed(self, policy: Policy, due: tuple[datetime, ...], now: datetime) -> RunRow:
        late = (now - due[-1]).total_seconds()
        what = f"{len(due)} runs due from {iso(due[0])} to {iso(due[-1])}" if len(due) > 1 else \
            f"the run due at {iso(due[-1])}"
        log.warning("policy %s: missed %s", policy.name, what)
        return RunRow(policy.name, policy.kind, "schedule", "missed", now, due[-1],
                      error=f"missed {what} (the last {late:.0f}s late; grace {policy.misfire_grace:.0f}s)",
                      details={"missed": len(due)})

    def _attempt(self, policy: Policy, scheduled_for: datetime | None, trigger: str, attempt: int,
                 lock: threading.Lock, run_id: int | None = None) -> tuple[str, bool]:
        if run_id is None:
            run_id = self.store.start_run(policy.name, policy.kind, trigger, self.clock(), scheduled_for, attempt)
        ctx = ActionContext(policy, self.bundle(), self.nodes, self.store, run_id, self.clock, stopping=self.stopping)
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
            watcher = threading.Thread(target=release_when_done, name=f"timed-out-{policy.name}", daemon=True)
            with self._timed_out_lock:
                self._timed_out = [t for t in self._timed_out if t.is_alive()] + [watcher]
            watcher.start()
            return "timeout", False
        status = outcome.get("status", "failed")
        self.store.finish_run(run_id, status, self.clock(), outcome.get("error"), ctx.details)
        log.info("policy %s: run %d %s%s", policy.name, run_id, status,
                 f": {outcome['error']}" if outcome.get("error") else "")
        return status, True
