"""Alerts: an operator is told when a recovery point is older than its objective, a run fails,
an AIM set stalls, errs or is fenced, or a DR test fails.

:mod:`.conditions` reads what is wrong now from what the orchestrator already knows (the outcome
store, the stall watchdog); :mod:`.engine` turns its changes into notifications (one when a
condition starts, one when it ends, reminders at most every ``repeat``), recorded in the store;
:mod:`.receivers` delivers them (webhook, e-mail), retried with backoff on a thread of its own, so
that a receiver that is down never slows a run."""

from .conditions import Condition, conditions
from .engine import Alerts, Delivery

__all__ = ["Alerts", "Condition", "Delivery", "conditions"]
