"""``aimsnap policy schema|validate`` and ``aimsnap plan``."""

import json
from datetime import datetime, timezone

import click

from engine import InvalidInput
from policies.schema import schema
from policies.validate import load_policies

from ..apply import reconcile
from ..schedule.compile import compile_jobs
from .output import print_json, print_table


@click.group()
def policy() -> None:
    """The policy language: its schema, and checking files."""


@policy.command("schema")
def policy_schema() -> None:
    """Print the JSON Schema (draft 2020-12) for editors:
    `# yaml-language-server: $schema=FILE` at the top of a policy file."""
    click.echo(json.dumps(schema(), indent=2))


def _load(files: tuple[str, ...]):
    bundle = load_policies(list(files))
    for w in bundle.warnings:
        click.echo(str(w), err=True)
    return bundle


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--check-nodes", is_flag=True, help="Also ask each node whether the declared resources exist and match.")
@click.option("--json", "as_json", is_flag=True, help="Print the compiled jobs (and node checks) as JSON.")
def policy_validate(files: tuple[str, ...], check_nodes: bool, as_json: bool) -> int:
    """Check policy files: YAML, schema and meaning, every problem as FILE:LINE:COL (exit 2)."""
    bundle = _load(files)
    jobs = compile_jobs(bundle)
    actions = reconcile(bundle, dry_run=True) if check_nodes else []
    if as_json:
        print_json({"jobs": [{"job": j.id, "policy": j.name, "action": j.action, "trigger": str(j.trigger)}
                             for j in jobs], "nodes": [a.as_dict() for a in actions]})
    else:
        click.echo(f"ok: {len(files)} file(s), {len(bundle.nodes)} node(s), {len(bundle.resources)} resource(s), "
                   f"{len(jobs)} job(s)" + (f", {len(bundle.plans)} recovery plan(s)" if bundle.plans else ""))
        if actions:
            _print_actions(actions)
    return 1 if any(a.action in ("drift", "error") for a in actions) else 0


def _print_actions(actions) -> None:
    print_table([a.as_dict() for a in actions], [("node", "NODE"), ("kind", "KIND"), ("name", "NAME"),
                                                 ("action", "STATE"), ("detail", "DETAIL")])


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only say what would be created.")
@click.option("--json", "as_json", is_flag=True)
def apply(files: tuple[str, ...], dry_run: bool, as_json: bool) -> int:
    """Create the declared resources that are missing on the nodes; report drift; never delete."""
    actions = reconcile(_load(files), dry_run=dry_run)
    print_json([a.as_dict() for a in actions]) if as_json else _print_actions(actions)
    bad = [a for a in actions if a.action in ("drift", "error")]
    for a in bad:
        click.echo(f"aimsnap: error: {a.kind.replace('_', ' ')} {a.name} on {a.node}: {a.detail}", err=True)
    return 1 if bad else 0


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--from", "start", default=None, help="ISO-8601 start time [default: now].")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
def plan(files: tuple[str, ...], start: str | None, count: int, as_json: bool) -> None:
    """The next fire times of every job, computed by the scheduler's own triggers."""
    try:
        at = datetime.fromisoformat(start) if start else datetime.now(timezone.utc)
    except ValueError:
        raise InvalidInput(f"invalid --from {start!r}: write an ISO-8601 time, e.g. 2026-03-29T00:00:00+01:00") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    rows = [{"policy": j.name, "job": j.id, "fire_time": t.isoformat()}
            for j in compile_jobs(_load(files)) for t in j.trigger.fire_times(at, count)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("policy", "POLICY"), ("fire_time", "FIRE TIME")], empty="no jobs")


COMMANDS = (policy, plan, apply)
