"""auto-marker: quiesce (``pre``), place the marker, thaw (``post``, always, also after a failure or
a timeout), then wait for the destination point."""

import subprocess

from . import ActionContext, ActionFailed, ActionTimeout
from .markers import settle


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


def run(ctx: ActionContext) -> None:
    p = ctx.policy
    marker = None
    try:
        if p.quiesce_pre:
            command(p.quiesce_pre, p.quiesce_timeout, "pre", ctx.details)
        marker = ctx.nodes(p.node).replication.issue_marker(p.aim_set, p.destination_snapshot, p.marker_label)
    finally:
        if p.quiesce_post:
            command(p.quiesce_post, p.quiesce_timeout, "post", ctx.details)
    settle(ctx, marker, p.marker_wait)
