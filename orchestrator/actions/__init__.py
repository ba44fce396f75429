"""What a run does, one module per policy kind. Each action takes an :class:`ActionContext` and
returns the run's details (blocks, bytes, durations, marker); it raises :class:`ActionFailed`
with one line for the operator when the run fails."""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from engine.interface import NodeAPI
from policies.model import Bundle, Policy

from ..store import Store


class ActionFailed(Exception):
    """The run failed; the message says why (it goes into `history`)."""

    status = "failed"


class ActionTimeout(ActionFailed):
    status = "timeout"


@dataclass
class ActionContext:
    policy: Policy
    bundle: Bundle
    nodes: Callable[[str], NodeAPI]  # node name -> its client
    store: Store
    run_id: int
    clock: Callable[[], datetime]
    details: dict = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)  # set at shutdown: commands end early

    def record_marker(self, marker: dict, node: str | None = None) -> None:
        self.store.record_marker(self.run_id, self.policy.name, node or self.policy.node, marker)


def run_action(ctx: ActionContext) -> dict:
    from . import auto_marker, dr_test, group, source_snapshot
    actions = {"source-snapshot": source_snapshot.run, "auto-marker": auto_marker.run, "group": group.run,
               "dr-test": dr_test.run}
    actions[ctx.policy.kind](ctx)
    if ctx.policy.retain:  # after a point landed: every kind prunes the points it made
        from .retention import prune_destination
        ctx.details["pruned"] = prune_destination(ctx)
    return ctx.details
