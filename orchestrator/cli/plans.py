"""``aimsnap failover|failback|switchover --plan NAME FILES…``: run a recovery plan of the policy
files (see :mod:`orchestrator.actions.plans`). Exit 1 if a member or an `after` command failed."""

from collections.abc import Callable
from datetime import datetime, timezone

import click

from engine import InvalidInput
from policies.validate import load_policies

from ..actions.plans import PlanRun
from ..nodes import Nodes
from ..store import Store
from .output import print_json, print_table
from .run import db_option, json_option

files_argument = click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
plan_option = click.option("--plan", "plan_name", required=True,
                           help="The recovery plan (policy files: recovery_plans).")


def _run(files: tuple[str, ...], plan_name: str, db: str, verb: Callable[[PlanRun], dict], as_json: bool) -> int:
    bundle = load_policies(list(files))
    plan = next((p for p in bundle.plans if p.name == plan_name), None)
    if plan is None:
        known = ", ".join(sorted(p.name for p in bundle.plans)) or "none"
        raise InvalidInput(f"no recovery plan {plan_name!r} in {', '.join(files)} (plans: {known})")
    nodes = Nodes(bundle)
    try:
        out = verb(PlanRun(plan, nodes, Store(db), lambda: datetime.now(timezone.utc)))
    finally:
        nodes.close()
    if as_json:
        print_json(out)
    elif out.get("dry_run"):
        click.echo(f"recovery plan {plan.name} would fail over at {plan.node}:")
        print_table(out["members"], [("member", "MEMBER"), ("aim_set", "AIM SET"), ("point", "POINT")])
        for argv in out["after"]:
            click.echo(f"then run: {' '.join(argv)}")
    else:
        rows = [{**m, **{k: (m.get("result") or {}).get(k) for k in ("point", "rpo_seconds", "blocks_to_send")}}
                for m in out["members"]]
        print_table(rows, [("member", "MEMBER"), ("aim_set", "AIM SET"), ("at", "AT"), ("status", "STATUS"),
                           ("point", "POINT"), ("rpo_seconds", "RPO S"), ("blocks_to_send", "BLOCKS"),
                           ("seconds", "SECONDS"), ("error", "ERROR")])
        for f in out.get("failed", []):
            if "after" in f:
                click.echo(f"after command {' '.join(f['after'])} failed: {f['error']}")
        click.echo(f"recovery plan {plan.name}: {out['verb']} {out['status']} in {out['seconds']} s")
    return 0 if out.get("dry_run") or out["status"] == "ok" else 1


@click.command("failover")
@plan_option
@click.option("--dry-run", is_flag=True, help="Say which point each member would fail over to; change nothing.")
@files_argument
@db_option
@json_option
def failover(plan_name: str, dry_run: bool, files: tuple[str, ...], db: str, as_json: bool) -> int:
    """Fail a recovery plan over at its node: every member writable (a group's at one group
    point), then its `after` commands in order."""
    return _run(files, plan_name, db, lambda r: r.failover(dry_run), as_json)


@click.command("failback")
@plan_option
@files_argument
@db_option
@json_option
def failback(plan_name: str, files: tuple[str, ...], db: str, as_json: bool) -> int:
    """Fail every member of a failed-over plan back to its old source, sending only what differs."""
    return _run(files, plan_name, db, lambda r: r.failback(), as_json)


@click.command("switchover")
@plan_option
@files_argument
@db_option
@json_option
def switchover(plan_name: str, files: tuple[str, ...], db: str, as_json: bool) -> int:
    """Switch every member of a plan over (groups at one write-order point), at whichever node is
    its source now: the original direction, or back."""
    return _run(files, plan_name, db, lambda r: r.switchover(), as_json)


COMMANDS = (failover, failback, switchover)
