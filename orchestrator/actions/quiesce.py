"""Quiesce hooks around a marker, for every policy kind: ``pre`` freezes the application, the body
places the marker (and for source-snapshot increments first), ``post`` thaws it — always, also after
a failure or a timeout, so an application is never left frozen by a run."""

from collections.abc import Iterator
from contextlib import contextmanager

from . import ActionContext, ActionFailed
from .commands import command as run_command, last_line


def command(argv: tuple[str, ...], timeout: float, what: str, details: dict) -> None:
    """Run a quiesce command; its output goes into the run's details; a non-zero exit fails the run."""
    code = run_command(argv, timeout, f"quiesce {what}", details, key=what)
    if code != 0:
        raise ActionFailed(f"quiesce {what} command {argv[0]} exited {code}: {last_line(details[what])}")


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
