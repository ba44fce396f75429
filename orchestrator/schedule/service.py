"""``aimsnap run``: the policies as APScheduler jobs, rebuilt from the files at every start.

The triggers are the policy layer's :class:`~orchestrator.triggers.PolicyTrigger` objects; a small
executor hands each job its scheduled time, so that misfires are judged against the wall clock by
the :class:`~orchestrator.runner.Runner` (APScheduler's own grace is switched off). No job store
is persisted: the files are the source of truth, the SQLite store keeps the history.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from policies.errors import PolicyError
from policies.model import Bundle
from policies.validate import load_policies

from ..nodes import Nodes
from ..store import Store, iso, parse_iso
from .compile import JobSpec, compile_jobs
from .runner import Admission, Runner

log = logging.getLogger("aimsnap.scheduler")
MAX_CATCH_UP_SCAN = 100000
LINGER = 0.002  # seconds without a new due job that end a wave
SHUTDOWN_GRACE = 30.0  # seconds shutdown waits for runs that outlived their timeout


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PolicyExecutor(BaseExecutor):
    """APScheduler's executor for policy jobs. Each due job is admitted in the scheduler's own thread
    (a decision and a prepared row: microseconds, so a thousand jobs due at once are all decided at
    their fire time); a dispatcher writes the admissions that piled up meanwhile in one transaction,
    with the jobs' next fire times, and hands the runs to a thread pool. ``inline`` does the same
    step by step in :meth:`run_pending` (tests drive the clock and the scheduler)."""

    def __init__(self, runner: Runner, inline: bool = False, max_workers: int = 32) -> None:
        super().__init__()
        self.runner, self.inline, self.max_workers = runner, inline, max_workers
        self.due: list[tuple[Job, Admission]] = []
        self.wake = threading.Condition()
        self.closing = False
        self.pool: ThreadPoolExecutor | None = None
        self.dispatcher: threading.Thread | None = None

    def start(self, scheduler, alias):
        super().start(scheduler, alias)
        if not self.inline:
            self.pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="policy")
            self.dispatcher = threading.Thread(target=self._dispatch_loop, name="dispatcher", daemon=True)
            self.dispatcher.start()

    def shutdown(self, wait=True):
        with self.wake:
            self.closing = True
            self.wake.notify()
        if self.dispatcher is not None:
            self.dispatcher.join()
        if self.pool is not None:
            self.pool.shutdown(wait=wait)

    def run_now(self, fn: Callable[..., object], *args: object) -> bool:
        """Run ``fn`` on the runs' pool (inline: here), so that shutdown waits for it like any run;
        False once shutting down."""
        if self.inline:
            fn(*args)
            return True
        with self.wake:
            if self.closing or self.pool is None:
                return False
            self.pool.submit(fn, *args)
        return True

    def _do_submit_job(self, job, run_times):
        adm = self.runner.admit(job.id, run_times[-1], overdue=tuple(run_times[:-1]))
        if adm is None:  # the policy went away in a reload
            self._run_job_success(job.id, [])
            return
        with self.wake:
            self.due.append((job, adm))
            if len(self.due) == 1:  # only the first of a wave wakes the dispatcher: no ping-pong
                self.wake.notify()

    def _dispatch_loop(self) -> None:
        while True:
            with self.wake:
                while not self.due and not self.closing:
                    self.wake.wait()
            # linger while the scheduler is still submitting this wave: the whole wave is admitted
            # at its fire time before any of its runs competes with the scheduler for the GIL
            seen = -1
            while len(self.due) != seen and not self.closing:
                seen = len(self.due)
                time.sleep(LINGER)
            with self.wake:
                batch, self.due = self.due, []
            if batch:
                self._dispatch(batch)
            elif self.closing:
                return

    def _dispatch(self, batch: list[tuple[Job, Admission]]) -> None:
        # by now the scheduler has moved each job on to its next fire time
        schedule = [(job.id, job.next_run_time and iso(job.next_run_time)) for job, _ in batch]
        runs = [(job.id, adm) for job, adm in batch]
        try:
            self.runner.write([adm for _, adm in runs], schedule)
        except Exception:  # noqa: BLE001 - the store failed: nothing may run unrecorded
            log.exception("could not record %d run(s); they do not run", len(runs))
            for job_id, adm in runs:
                if adm.runs:
                    adm.lock.release()  # type: ignore[union-attr]
                self._run_job_success(job_id, [])
            return
        for job_id, adm in runs:
            if not adm.runs:
                self._run_job_success(job_id, [])
            elif self.inline:
                self._execute(job_id, adm)
            else:
                self.pool.submit(self._execute, job_id, adm)  # type: ignore[union-attr]

    def _execute(self, job_id: str, adm: Admission) -> None:
        try:
            self.runner.execute(adm)
        finally:
            self._run_job_success(job_id, [])

    def run_pending(self) -> None:
        while self.due:
            batch, self.due = self.due, []
            self._dispatch(batch)


class SteppedScheduler(BaseScheduler):
    """A scheduler without a thread of its own: :meth:`Orchestrator.process_due` steps it (tests
    move the clock with time-machine and step; nothing sleeps)."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)


class Orchestrator:
    def __init__(self, files: list[str], db: str, *, clock: Callable[[], datetime] = utcnow, inline: bool = False,
                 nodes: Callable[[Bundle], Callable[[str], object]] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.files = [os.path.abspath(f) for f in files]
        self.clock = clock
        self.store = Store(db)
        self.bundle: Bundle = load_policies(self.files)  # invalid files: PolicyError, nothing starts
        self.jobs: dict[str, JobSpec] = {}
        self._nodes_factory = nodes or Nodes
        self._nodes = self._nodes_factory(self.bundle)
        kw = {"sleep": sleep} if sleep else {}
        self.runner = Runner(self.store, lambda: self.bundle, lambda name: self._nodes(name), clock, **kw)
        self.executor = PolicyExecutor(self.runner, inline=inline)
        cls = SteppedScheduler if inline else BackgroundScheduler
        self.scheduler = cls(timezone=timezone.utc, executors={"default": self.executor},
                             job_defaults={"coalesce": False, "max_instances": 1000, "misfire_grace_time": None})

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, paused: bool = False) -> None:
        now = self.clock()
        interrupted = self.store.interrupt_running(now)
        if interrupted:
            self.store.event(now, "interrupted", f"{interrupted} run(s) left running by a stopped orchestrator")
        self.store.set_service(pid=str(os.getpid()), files="\n".join(self.files), started_at=iso(now))
        self.scheduler.start(paused=True)
        self._sync_jobs(self.bundle)
        self.catch_up(now)
        if not paused:
            self.scheduler.resume()

    def shutdown(self, wait: bool = True) -> None:
        self.runner.stopping.set()
        # Drain the runs first: APScheduler's shutdown holds its job-store lock while it waits for
        # the executor, and a finishing run reads its job's next fire time under that same lock.
        self.scheduler.pause()
        self.executor.shutdown(wait=wait)
        self.scheduler.shutdown(wait=False)
        for name in self.runner.join_timed_out(SHUTDOWN_GRACE if wait else 0):
            log.warning("policy %s: a run that timed out is still running at shutdown; it is abandoned", name)
        if not wait:
            self.store.interrupt_running(self.clock())
        if hasattr(self._nodes, "close"):
            self._nodes.close()

    def reload(self) -> list:
        """Re-read the files; on any error keep the running schedule and return the problems."""
        try:
            bundle = load_policies(self.files)
        except PolicyError as e:
            for p in e.problems:
                log.error("reload refused: %s", p)
            self.store.event(self.clock(), "reload-refused", f"{len(e.problems)} problem(s)",
                             details={"problems": [str(p) for p in e.problems]})
            return e.problems
        self.bundle = bundle
        if hasattr(self._nodes, "update"):  # runs in progress keep their clients (see Nodes)
            self._nodes.update(bundle)
        else:
            self._nodes = self._nodes_factory(bundle)
        self._sync_jobs(bundle)
        self.store.event(self.clock(), "reload", f"{len(self.jobs)} job(s)")
        return []

    # -- jobs ------------------------------------------------------------------------------------------
    def _sync_jobs(self, bundle: Bundle) -> None:
        new = {j.id: j for j in compile_jobs(bundle)}
        for job_id in set(self.jobs) - set(new):
            self.scheduler.remove_job(job_id)
            log.info("job %s removed", job_id)
        for job_id, spec in new.items():
            old = self.jobs.get(job_id)
            if old is not None and old.policy == spec.policy:
                continue
            next_fire = spec.trigger.get_next_fire_time(None, self.clock())
            self.scheduler.add_job(self._noop, trigger=spec.trigger, id=job_id, name=spec.name,
                                   replace_existing=True, next_run_time=next_fire)
            log.info("job %s %s: %s, next at %s", job_id, "changed" if old else "added", spec.trigger,
                     next_fire and next_fire.isoformat())
        self.jobs = new
        self.publish_schedule()

    @staticmethod
    def _noop() -> None:  # the executor calls the runner; APScheduler wants a callable per job
        pass

    def publish_schedule(self) -> None:
        rows = []
        for job_id, spec in self.jobs.items():
            job = self.scheduler.get_job(job_id)
            nxt = job.next_run_time if job else None
            rows.append({"policy": spec.name, "kind": spec.action, "trigger": str(spec.trigger),
                         "next_fire": nxt and iso(nxt), "rpo_objective": spec.policy.rpo_objective})
        self.store.set_schedule(rows, self.clock())

    def catch_up(self, now: datetime) -> None:
        """Fires that fell due while no orchestrator ran (downtime), judged from the store."""
        for spec in self.jobs.values():
            last = self.store.last_scheduled(spec.name)
            if last is None:
                continue
            t: datetime | None = parse_iso(last)
            due: list[datetime] = []
            while len(due) < MAX_CATCH_UP_SCAN:
                t = spec.trigger.get_next_fire_time(t, t)
                if t is None or t > now:
                    break
                due.append(t)
            if due:
                self.runner.fire(spec.name, due[-1], overdue=tuple(due[:-1]))

    # -- test and CLI helpers ------------------------------------------------------------------------------
    def process_due(self) -> None:
        """Run what is due now (by the clock), synchronously: for tests with an inline executor."""
        self.scheduler._process_jobs()  # noqa: SLF001 - APScheduler 3's one step, stable across 3.x
        self.executor.run_pending()
        self.publish_schedule()

    def trigger(self, policy: str) -> str | None:
        return self.runner.fire(policy, None, trigger="manual")

    def request(self, policy: str) -> bool:
        """A manual trigger from the outcome store, run like the scheduled runs (shutdown waits)."""
        started = self.executor.run_now(self.trigger, policy)
        if not started:
            log.warning("policy %s: manual trigger not started: the orchestrator is stopping", policy)
        return started
