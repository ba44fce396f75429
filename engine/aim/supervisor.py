"""A supervised loop: runs one step of work again and again, on a node's reactor, and never dies.

A step that returns ran well. A step that raises, whatever the exception, is logged with its
reason, counted, kept as ``last_error`` (what ``aim status`` and ``/metrics`` show) and run again
after an exponential backoff with jitter, from 100 ms up to 30 s. A step that reaches a healthy
point (the sender: progress, see ``sender.STEADY_SECONDS``) calls :meth:`Supervisor.healthy`, and
the backoff starts over. Time is passed in: tests give a ``delay`` that records instead of waiting.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..net.reactor import Reactor, Timer

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


class Supervisor:
    """Runs ``step`` on the reactor's pool for blocking jobs, again and again. ``step`` returns the
    seconds until the next attempt, or None when its work goes on elsewhere (a stream, in turns on
    the reactor) and will call :meth:`ended` when that ends. No thread of its own: a thousand
    supervised sets cost a timer each."""

    def __init__(self, name: str, step: Callable[[], float | None], reactor: Reactor, *,
                 backoff: Backoff | None = None, delay: Callable[[float], float] | None = None,
                 wall: Callable[[], float] = time.time, expected: tuple[type[BaseException], ...] = EXPECTED) -> None:
        """``delay`` maps a wait to the one taken (tests record the waits and take none)."""
        self.name, self.step, self.reactor, self.expected = name, step, reactor, expected
        self.backoff = backoff or Backoff()
        self.delay = delay or (lambda seconds: seconds)
        self.wall = wall
        self.stopping = False
        self.errors = 0  # every failed step since start (a counter in /metrics)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.retry_at: float | None = None
        self._lock = threading.Lock()  # a leaf lock
        self._timer: Timer | None = None
        self._woken = False  # woken while a step was in progress: the next attempt is not waited for
        self._quiet = threading.Event()  # clear while a step or its work is in progress
        self._quiet.set()

    # -- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        self.stopping = False
        self._schedule(0.0)

    def stop(self, timeout: float = 10.0) -> None:
        """No more attempts; wait for the one in progress (its owner cut its connection first)."""
        with self._lock:
            self.stopping = True
            if self._timer is not None:
                self._timer.cancel()
        self._quiet.wait(timeout)

    def wake(self) -> None:
        """Try again now (a pause or resume); if a step is in progress, as soon as it returns."""
        with self._lock:
            running = not self._quiet.is_set()
            self._woken = running
        if not running:
            self.retry_at = None
            self._schedule(0.0)

    def ended(self, error: BaseException | None = None) -> None:
        """The step's work that went on elsewhere has ended, well (None) or not."""
        self._done(error, 0.0)

    def _schedule(self, seconds: float) -> None:
        with self._lock:
            if self.stopping:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.reactor.call_later(self.delay(seconds) if seconds else 0.0, self._fire)

    def _fire(self) -> None:
        with self._lock:
            if self.stopping or not self._quiet.is_set():
                return
            self._timer, self.retry_at = None, None
            self._quiet.clear()
        if self.reactor.run_blocking(self._attempt) is None:  # the reactor is shut down
            self._done(None, None)

    def _attempt(self) -> None:
        try:
            after = self.step()
        except Exception as e:  # noqa: BLE001 - the point of a supervisor: nothing ends the loop
            self._done(e, 0.0)
            return
        if after is not None:
            self._done(None, after)

    def _done(self, error: BaseException | None, after: float | None) -> None:
        with self._lock:
            self._quiet.set()
            woken, self._woken = self._woken, False
        if self.stopping or after is None:
            return
        if woken and error is None:
            after = 0.0
        if error is not None:
            self.failed(error)
            after = self.backoff.next()
            self.retry_at = self.wall() + after
        self._schedule(after)

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
