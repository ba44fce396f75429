"""``aimsnap alerts test RECEIVER FILES…``: send a test notification to a receiver of the policy
files, once, and say whether it arrived (exit 1 if not); recorded like any delivery."""

from datetime import datetime, timezone

import click

from engine import InvalidInput
from policies.validate import load_policies

from ..alerts.conditions import Condition
from ..alerts.engine import Delivery, notification
from ..store import Store, iso
from .run import db_option


@click.group()
def alerts() -> None:
    """Alerts: receivers (webhook, e-mail) and the routes of alert rules to them (policy files)."""


@alerts.command("test")
@click.argument("receiver")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@db_option
def alerts_test(receiver: str, files: tuple[str, ...], db: str) -> int:
    """Send RECEIVER a test alert (status firing, rule `test`)."""
    bundle = load_policies(list(files))
    rec = bundle.alerting.receivers.get(receiver)
    if rec is None:
        known = ", ".join(sorted(bundle.alerting.receivers)) or "none"
        raise InvalidInput(f"no receiver {receiver!r} in {', '.join(files)} (receivers: {known})")
    now = datetime.now(timezone.utc)
    n = notification(Condition("test", f"test:{receiver}", f"a test of receiver {receiver} (aimsnap alerts test)"),
                     "firing", iso(now), None)
    store = Store(db)
    if Delivery(store, lambda: datetime.now(timezone.utc), inline=True).deliver(rec, n, attempts=1):
        click.echo(f"sent a test alert to {receiver} ({rec.kind})")
        return 0
    click.echo(f"aimsnap: error: {store.events(limit=1)[0]['message']}", err=True)
    return 1


COMMANDS = (alerts,)
