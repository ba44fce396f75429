"""Quiesce hooks around a marker, for every policy kind: ``pre`` freezes the application, the body
places the marker (and for source-snapshot increments first), ``post`` thaws it — always, also after
a failure or a timeout, so an application is never left frozen by a run."""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from . import ActionContext, ActionFailed, ActionTimeout


def command(argv: tuple[str, ...], timeout: float, what: str, details: dict) -> None:
    """Run a quiesce command; its output goes into the run's details."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        details[what] = {"argv": list(argv), "timeout": timeout, "output": (e.stdout or "")[-4000:]
                         if isinstance(e.stdout, str) else ""}
        raise ActionTimeout(f"quiesce {what} command {argv[0]} did not finish within {timeout:g}s") from None
    except OSError as e:
        details[what] = {"argv": list(argv), "error": str(e)}
        raise ActionFailed(f"quiesce {what} command {argv[0]} could not run: {e.strerror or e}") from None
    details[what] = {"argv": list(argv), "exit": p.returncode, "stdout": p.stdout[-4000:], "stderr": p.stderr[-4000:]}
    if p.returncode != 0:
        raise ActionFailed(f"quiesce {what} command {argv[0]} exited {p.returncode}: "
                           f"{(p.stderr or p.stdout).strip().splitlines()[-1:] or ''}")


@contextmanager
def quiesced(ctx: ActionContext) -> Iterator[None]:
    """Hold the application quiet for the body (a no-op without hooks)."""
    p = ctx.policy
    try:
        if p.quiesce_pre:
            command(p.quiesce_pre, p.quiesce_timeout, "pre", ctx.details)
        yield
    finally:
        if p.quiesce_post:
            command(p.quiesce_post, p.quiesce_timeout, "post", ctx.details)
