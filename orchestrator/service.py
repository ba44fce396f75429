"""``aimsnap run``: the policies as APScheduler jobs, rebuilt from the files at every start.

The triggers are the policy layer's :class:`~orchestrator.triggers.PolicyTrigger` objects; a small
executor hands each job its scheduled time, so that misfires are judged against the wall clock by
the :class:`~orchestrator.runner.Runner` (APScheduler's own grace is switched off). No job store
is persisted: the files are the source of truth, the SQLite store keeps the history.
"""

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from policies.errors import PolicyError
from policies.model import Bundle
from policies.validate import load_policies

from .apply import Nodes
from .compile import JobSpec, compile_jobs
from .runner import Runner
from .store import Store, iso

log = logging.getLogger("aimsnap.scheduler")
MAX_CATCH_UP_SCAN = 100000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PolicyExecutor(BaseExecutor):
    """Runs ``handler(job_id, run_times)`` (every fire time that fell due, oldest first) on a thread pool; ``inline`` queues the calls for
    :meth:`run_pending` instead (tests drive the clock and the scheduler step by step)."""

    def __init__(self, handler: Callable[[str, list[datetime]], None], inline: bool = False,
                 max_workers: int = 32) -> None:
        super().__init__()
        self.handler, self.inline, self.max_workers = handler, inline, max_workers
        self.pending: list[Callable[[], None]] = []
        self.pool: ThreadPoolExecutor | None = None

    def start(self, scheduler, alias):
        super().start(scheduler, alias)
        if not self.inline:
            self.pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="policy")

    def shutdown(self, wait=True):
        if self.pool is not None:
            self.pool.shutdown(wait=wait)

    def _do_submit_job(self, job, run_times):
        def call() -> None:
            try:
                self.handler(job.id, run_times)
            finally:
                self._run_job_success(job.id, [])
        if self.inline:
            self.pending.append(call)
        else:
            self.pool.submit(call)

    def run_pending(self) -> None:
        while self.pending:
            self.pending.pop(0)()


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
        self.executor = PolicyExecutor(self._fire, inline=inline)
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
        if hasattr(self._nodes, "close"):
            self._nodes.close()
        self.bundle = bundle
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
                         "next_fire": nxt and iso(nxt)})
        self.store.set_schedule(rows, self.clock())

    def _fire(self, job_id: str, run_times: list[datetime]) -> None:
        """APScheduler hands over every fire time that fell due (coalescing is ours: the runner
        records the older ones as missed and judges the newest against the grace)."""
        self.runner.fire(job_id, run_times[-1], overdue=tuple(run_times[:-1]))
        job = self.scheduler.get_job(job_id)
        if job is not None:  # one row: rewriting the whole schedule per run costs O(jobs)
            self.store.update_schedule(job_id, job.next_run_time and iso(job.next_run_time), self.clock())

    def catch_up(self, now: datetime) -> None:
        """Fires that fell due while no orchestrator ran (downtime), judged from the store."""
        for spec in self.jobs.values():
            last = self.store.last_scheduled(spec.name)
            if last is None:
                continue
            t: datetime | None = datetime.fromisoformat(last.replace("Z", "+00:00"))
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
