"""Many quiet connections, a few busy ones, and a constant number of threads: one thread waits
(``epoll``) for sockets and timers, and bounded pools of workers run the work they wake.

A node serves hundreds to thousands of AIM streams; most are idle most of the time (a heartbeat
every few seconds), a few stream flat out. A thread per stream would make the node's cost grow
with the number of volumes; here it grows with the work. What runs on a worker is plain
blocking code, but bounded: a :class:`Task` *turn* does a slice of work (a few MiB, a few tens
of milliseconds), then either asks for another turn (back of the queue: fair to the others) or
*parks* its socket, to be woken when bytes arrive or a timeout passes. Two pools: ``submit`` for
turns, ``run_blocking`` for the few long blocking jobs (connect, handshake, resynchronisation),
so that they never hold up the turns of streaming sets.

Callbacks never run on the loop thread (it only dispatches), and an exception a callback raises
is logged with its traceback: nothing dies silently.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("aimsnap.reactor")
TURN_WORKERS = 16
BLOCKING_WORKERS = 8


@dataclass(order=True)
class Timer:
    """A call at ``deadline`` (the reactor's monotonic clock) unless cancelled first."""

    deadline: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = _nothing  # what it would have called is not kept alive until the deadline


def _nothing() -> None:
    pass


@dataclass
class _Parked:
    sock: socket.socket
    wake: Callable[[], None]
    timer: Timer | None = None


class Reactor:
    def __init__(self, name: str, workers: int = TURN_WORKERS, blocking_workers: int = BLOCKING_WORKERS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.name, self.workers, self.blocking_workers, self.monotonic = name, workers, blocking_workers, monotonic
        self._lock = threading.Lock()  # a leaf lock: the parked sockets, the timers
        self._parked: dict[int, _Parked] = {}  # fd -> who waits for it
        self._timers: list[Timer] = []  # a heap
        self._compact_at = 4096
        self._seq = itertools.count()
        self._waiting_until = 0.0  # the loop's current wait ends then (an earlier timer pokes it)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ep: select.epoll | None = None
        self._poke_r = self._poke_w = -1
        self._pool: ThreadPoolExecutor | None = None
        self._blocking: ThreadPoolExecutor | None = None

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Idempotent; every entry point calls it (a node that only receives, or only sends)."""
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._ep = select.epoll()
            self._poke_r, self._poke_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._ep.register(self._poke_r, select.EPOLLIN)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-turn")
            self._blocking = ThreadPoolExecutor(self.blocking_workers, thread_name_prefix=f"{self.name}-job")
            self._thread = threading.Thread(target=self._loop, name=f"{self.name}-reactor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop waiting and wait for the workers' current work (bounded by socket timeouts; the
        owners cut their connections first). Parked sockets are forgotten, not closed."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            return
        self._poke()
        thread.join(10)
        for pool in (self._pool, self._blocking):
            assert pool is not None
            pool.shutdown(wait=True, cancel_futures=True)
        assert self._ep is not None
        self._ep.close()
        os.close(self._poke_r)
        os.close(self._poke_w)

    @property
    def threads(self) -> int:
        """Threads this reactor can run at most (the loop and both pools)."""
        return 1 + self.workers + self.blocking_workers

    # -- work ------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[], None]) -> Future | None:
        """Run ``fn`` on a turn worker soon (FIFO)."""
        return self._run(fn, blocking=False)

    def run_blocking(self, fn: Callable[[], None]) -> Future | None:
        """Run ``fn`` on a worker of the pool for long blocking jobs."""
        return self._run(fn, blocking=True)

    def call_later(self, seconds: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on a turn worker once ``seconds`` have passed, unless the timer is cancelled."""
        self.start()
        with self._lock:
            timer, poke = self._later(seconds, fn)
        if poke:
            self._poke()
        return timer

    def _later(self, seconds: float, fn: Callable[[], None]) -> tuple[Timer, bool]:
        """Caller holds the lock: the timer, and whether the loop must be poked for it."""
        timer = Timer(self.monotonic() + max(seconds, 0.0), next(self._seq), fn)
        heapq.heappush(self._timers, timer)
        if len(self._timers) > self._compact_at:  # cancelled ones pile up (a re-park cancels one)
            self._timers = [t for t in self._timers if not t.cancelled]
            heapq.heapify(self._timers)
            self._compact_at = max(4096, 2 * len(self._timers))  # amortised: O(1) a timer
        return timer, timer.deadline < self._waiting_until

    def park(self, sock: socket.socket, wake: Callable[[], None], timeout: float, writable: bool = False) -> None:
        """Call ``wake`` (once, on a worker) when ``sock`` is readable (bytes, end of stream, an
        error), or writable too if ``writable`` (a send that would block), or ``timeout`` seconds
        have passed, whichever comes first. Parking a parked socket replaces its wake and
        timeout. The owner :meth:`forget`\\ s a socket before closing it."""
        self.start()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes wait in the TLS layer
            self.submit(wake)
            return
        try:
            fd = sock.fileno()
        except OSError:
            fd = -1
        if fd < 0:  # closed: the owner's next read says so
            self.submit(wake)
            return
        entry = _Parked(sock, wake)
        events = select.EPOLLIN | select.EPOLLONESHOT | (select.EPOLLOUT if writable else 0)
        with self._lock:  # the entry, then its timer, in one step: a short timeout cannot fire first
            old = self._parked.get(fd)
            self._parked[fd] = entry
            entry.timer, poke = self._later(timeout, lambda: self._expired(fd, entry))
            assert self._ep is not None
            try:
                if old is None:
                    self._ep.register(fd, events)
                else:
                    old.timer.cancel()  # type: ignore[union-attr]
                    self._ep.modify(fd, events)
            except (OSError, ValueError):  # closed meanwhile, or the reactor stopped
                del self._parked[fd]
                entry.timer.cancel()
                failed = True
            else:
                failed = False
        if failed:
            self.submit(wake)
        elif poke:
            self._poke()

    def forget(self, sock: socket.socket) -> None:
        """``sock`` is not waited for any more (its owner is about to close it)."""
        try:
            fd = sock.fileno()
        except OSError:
            return
        with self._lock:
            self._unpark(fd)

    # -- inside ----------------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], None], *, blocking: bool) -> Future | None:
        self.start()
        pool = self._blocking if blocking else self._pool
        if pool is None:  # stopped before it ever started
            return None
        try:
            return pool.submit(self._guarded, fn)
        except RuntimeError:  # shut down: the node is closing, and so is the owner
            return None

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a bug in a callback: said, not lost in a Future
            log.exception("reactor: a callback failed")

    def _unpark(self, fd: int) -> _Parked | None:
        """Caller holds the lock."""
        entry = self._parked.pop(fd, None)
        if entry is not None:
            assert entry.timer is not None and self._ep is not None
            entry.timer.cancel()
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass  # closed meanwhile: the kernel dropped it already
        return entry

    def _expired(self, fd: int, entry: _Parked) -> None:
        with self._lock:
            if self._parked.get(fd) is not entry:
                return  # woken by its socket, re-parked or forgotten meanwhile
            self._unpark(fd)
        entry.wake()

    def _poke(self) -> None:
        try:
            os.write(self._poke_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake anyway

    def _loop(self) -> None:
        assert self._ep is not None
        while True:
            due: list[Timer] = []
            with self._lock:
                if self._stopping:
                    return
                now = self.monotonic()
                while self._timers and self._timers[0].deadline <= now:
                    t = heapq.heappop(self._timers)
                    if not t.cancelled:
                        due.append(t)
                while self._timers and self._timers[0].cancelled:
                    heapq.heappop(self._timers)
                wait = min(self._timers[0].deadline - now, 1.0) if self._timers else 1.0
                self._waiting_until = now + wait
            for t in due:
                self.submit(t.fn)
            try:
                events = self._ep.poll(max(wait, 0.0))
            except InterruptedError:
                continue
            woken = []
            with self._lock:
                self._waiting_until = 0.0
                for fd, _ev in events:
                    if fd == self._poke_r:
                        try:
                            while os.read(self._poke_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    entry = self._unpark(fd)
                    if entry is not None:
                        woken.append(entry.wake)
            for wake in woken:
                self.submit(wake)


class Task:
    """Work that runs on one worker at a time, whoever wakes it: :meth:`wake` from any thread (a
    socket, a timer, the write path) asks for a turn; a wake during a turn gets another turn
    after it, at the back of the queue. A turn that wants to go on wakes its own task."""

    def __init__(self, reactor: Reactor, turn: Callable[[], None]) -> None:
        self.reactor, self.turn = reactor, turn
        self._lock = threading.Lock()  # a leaf lock
        self._busy = False  # queued or running
        self._again = False

    def wake(self) -> None:
        with self._lock:
            if self._busy:
                self._again = True
                return
            self._busy = True
        if self.reactor.submit(self._run) is None:
            with self._lock:
                self._busy = False

    def _run(self) -> None:
        with self._lock:
            self._again = False
        try:
            self.turn()
        finally:  # even if the turn raised: a task that stays busy would swallow every wake
            with self._lock:
                again = self._again
                self._busy = again
            if again and self.reactor.submit(self._run) is None:
                with self._lock:
                    self._busy = False
