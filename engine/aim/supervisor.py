"""A supervised loop: runs one step of work again and again on a thread of its own and never dies.

A step that returns ran well. A step that raises, whatever the exception, is logged with its
reason, counted, kept as ``last_error`` (what ``aim status`` and ``/metrics`` show) and run again
after an exponential backoff with jitter, from 100 ms up to 30 s. A step that reaches a healthy
point (the sender: progress, see ``sender.STEADY_SECONDS``) calls :meth:`Supervisor.healthy`, and
the backoff starts over. Time is passed in: tests give a ``sleep`` that records instead of waiting.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("aimsnap.aim")

# exceptions that are the network's or the peer's doing: one line in the log, no traceback
EXPECTED = (OSError, EOFError, ValueError)


@dataclass
class Backoff:
    first: float = 0.1
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next(self) -> float:
        """The wait before the next attempt: doubling from ``first``, at most ``cap``; jitter
        (x1 to x1.5) keeps many sets that failed together from retrying in step."""
        delay = min(self.cap, self.first * 2 ** min(self.failures, 32) * self.rng.uniform(1.0, 1.5))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Waker:
    """A sleep that can be cut short (stop, pause, resume); ``sleep`` is replaceable in tests."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._woken = False

    def sleep(self, seconds: float) -> None:
        with self.cond:
            if not self._woken:
                self.cond.wait(seconds)
            self._woken = False

    def wake(self) -> None:
        with self.cond:
            self._woken = True
            self.cond.notify_all()


class Supervisor:
    def __init__(self, name: str, step: Callable[[], None], *, backoff: Backoff | None = None,
                 sleep: Callable[[float], None] | None = None, wall: Callable[[], float] = time.time,
                 expected: tuple[type[BaseException], ...] = EXPECTED) -> None:
        self.name, self.step, self.expected = name, step, expected
        self.backoff = backoff or Backoff()
        self.waker = Waker()
        self.sleep = sleep or self.waker.sleep
        self.wall = wall
        self.stopping = False
        self.errors = 0  # every failed step since start (a counter in /metrics)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.retry_at: float | None = None
        self._thread: threading.Thread | None = None

    # -- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        self.waker.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        while not self.stopping:
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the point of a supervisor: nothing kills the loop
                if self.stopping:
                    break
                self.failed(e)
                delay = self.backoff.next()
                self.retry_at = self.wall() + delay
                self.sleep(delay)
                self.retry_at = None

    def healthy(self) -> None:
        """The step reached a good point: the next failure waits the shortest time again."""
        self.backoff.reset()
        self.last_error = None

    def failed(self, e: BaseException) -> None:
        self.errors += 1
        self.last_error = describe(e, self.expected)
        self.last_error_at = self.wall()
        if isinstance(e, self.expected):
            log.info("%s: %s (retry %d)", self.name, self.last_error, self.backoff.failures + 1)
        else:  # a bug, or a fault nobody foresaw: the traceback is worth its lines
            log.error("%s: unexpected %s (retry %d)", self.name, self.last_error, self.backoff.failures + 1,
                      exc_info=e)

    def status(self) -> dict:
        return {"last_error": self.last_error, "errors": self.errors,
                "retry_in": round(max(0.0, self.retry_at - self.wall()), 3) if self.retry_at else None}


def describe(e: BaseException, expected: tuple[type[BaseException], ...] = EXPECTED) -> str:
    """One line for the operator: an expected fault's message; anything else with its type."""
    if isinstance(e, expected):
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
