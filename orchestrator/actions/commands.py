"""Running an operator's command for a run (a quiesce hook, a DR test's check): argv, a timeout
that kills the whole process group (a check's helpers too), and bounded output for the history."""

import os
import signal
import subprocess
import threading
import time

from . import ActionFailed, ActionTimeout

OUTPUT_LIMIT = 4000  # characters of each stream kept in the run's details
POLL = 0.5  # seconds between looks at ``stopping``


def command(argv: tuple[str, ...], timeout: float, what: str, details: dict, *, key: str | None = None,
            env: dict | None = None, stopping: threading.Event | None = None) -> int:
    """Run ``argv``; record it in ``details[key or what]``; its exit code. A timeout, a command
    that cannot start, or ``stopping`` (the orchestrator shutting down) fails the run, saying
    ``what`` it was."""
    entry: dict = {"argv": list(argv)}
    details[key or what] = entry
    try:
        p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, errors="replace", start_new_session=True,
                             env={**os.environ, **env} if env else None)
    except OSError as e:
        entry["error"] = str(e)
        raise ActionFailed(f"{what} command {argv[0]} could not run: {e.strerror or e}") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = p.communicate(timeout=min(POLL, max(0.0, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            stopped = stopping is not None and stopping.is_set()
            if not stopped and time.monotonic() < deadline:
                continue
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            entry.update(timeout=timeout, stdout=out[-OUTPUT_LIMIT:], stderr=err[-OUTPUT_LIMIT:])
            if stopped:
                raise ActionFailed(f"{what} command {argv[0]} stopped: the orchestrator is shutting down") from None
            raise ActionTimeout(f"{what} command {argv[0]} did not finish within {timeout:g}s") from None
    entry.update(exit=p.returncode, stdout=out[-OUTPUT_LIMIT:], stderr=err[-OUTPUT_LIMIT:])
    return p.returncode


def last_line(entry: dict) -> str:
    text = (entry.get("stderr") or entry.get("stdout") or "").strip().splitlines()
    return text[-1][:300] if text else ""
