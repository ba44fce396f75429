"""CLI verbs that change which side of an AIM set is the source: ``aim failover`` and ``aim
failback`` (at the destination), ``aim switchover`` (at the source). Each prints what an
operator needs at 3 a.m.: what is writable now, the recovery point it holds, and how long it took."""

import click

from engine import InvalidInput
from policies.durations import DurationError, parse_duration

from ..nodes import read_file
from .aim import aim
from .output import print_json
from .storage import Target, json_option, pass_target


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as e:
        raise InvalidInput(str(e)) from None


@aim.command("failover")
@click.argument("name")
@click.option("--to-point", default=None, metavar="SNAPSHOT@POINT",
              help="First roll the volume back to this point (application-consistent).")
@click.option("--latest-point", is_flag=True, help="Roll back to the point the last applied marker made.")
@click.option("--force", is_flag=True, help="Fail over a destination that is resynchronising (inconsistent).")
@json_option
@pass_target
def aim_failover(target: Target, name: str, to_point: str | None, latest_point: bool, force: bool,
                 as_json: bool) -> None:
    """At the destination: make the AIM set's volume writable here (the source may be gone). The
    set is fenced from now on: its source is refused if it comes back. Without a point the volume
    keeps every write applied so far (crash-consistent, in write order)."""
    if to_point and latest_point:
        raise click.UsageError("give --to-point or --latest-point, not both")
    with target.node() as node:
        r = node.replication.failover(name, to_point, latest_point, force)
    if as_json:
        print_json(r)
        return
    again = " (it was failed over already)" if r.get("already") else ""
    click.echo(f"failed over AIM set {name}: volume {r.get('volume', '')} is writable here, generation "
               f"{r['generation']}{again}")
    click.echo(f"  point:          {r['point'] or 'live (crash-consistent: every write applied so far)'}")
    click.echo(f"  applied up to:  seq {r['applied_seq']}, source time {r['applied_source_time'] or 'unknown'}")
    if r.get("rpo_seconds") is not None:
        click.echo(f"  RPO achieved:   {r['rpo_seconds']} s of writes at the source may be missing here")
    click.echo(f"  took:           {r['seconds']} s (rolled back {r['rollback_bytes']} bytes)")


@aim.command("failback")
@click.argument("name")
@click.option("--source", default=None, metavar="HOST:AIMPORT",
              help="The old source's AIM port [default: where it last connected from].")
@click.option("--tls-ca", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Replicate back over TLS, trusting this certificate or CA for the old source's AIM port "
                   "[default: the certificate it gave when the set was made, if its port serves TLS].")
@json_option
@pass_target
def aim_failback(target: Target, name: str, source: str | None, tls_ca: str | None, as_json: bool) -> None:
    """At a failed-over destination: replicate back to the old source, sending only the blocks
    written here since the failover and those the old source wrote that never arrived. The old
    source keeps its divergent state as a point (VOLUME.divergent@divergent.TIME)."""
    with target.node() as node:
        r = node.replication.failback(name, source, read_file(tls_ca, "CA certificate") if tls_ca else None)
    if as_json:
        print_json(r)
        return
    if r.get("already"):
        click.echo(f"AIM set {name} replicates from here already ({r.get('state')})")
        return
    click.echo(f"failing back AIM set {name}: {r['volume']} -> {r['to']} (generation {r['generation']})")
    click.echo(f"  blocks to send: {r['blocks_to_send']} of {r['block_size']} bytes ({r['blocks_changed_here']} "
               f"written here, {r['blocks_changed_at_source']} at the old source)")
    click.echo(f"  kept there:     {r['divergent_point']}")
    click.echo(f"  follow it:      aimsnap aim status {name}   (resyncing, then replicating)")


@aim.command("switchover")
@click.argument("name", required=False)
@click.option("--group", default=None, help="Every member of this group, at one write-order point.")
@click.option("--timeout", default="5m", show_default=True, help="How long the journal may take to drain.")
@click.option("--abort", is_flag=True, help="Lift the fence of a switchover that did not reach the destination.")
@json_option
@pass_target
def aim_switchover(target: Target, name: str | None, group: str | None, timeout: str, abort: bool,
                   as_json: bool) -> None:
    """At the source: swap roles with the destination, nothing lost. Host writes here are fenced,
    the journal drains, both sides are compared at a final marker, the destination is promoted
    and replicates back here, with nothing to copy."""
    if bool(name) == bool(group):
        raise click.UsageError("give an AIM set, or --group, not both")
    seconds = _seconds(timeout)
    with target.node(timeout=seconds + 120) as node:
        repl = node.replication
        r = repl.switchover_group(group, seconds, abort) if group else repl.switchover(name, seconds, abort)
    if as_json:
        print_json(r)
        return
    if r.get("aborted"):
        click.echo(f"switchover of {name or group} aborted: host writes are accepted here again")
        return
    for s in r["aim_sets"]:
        if r.get("already"):
            click.echo(f"AIM set {s['name']} was switched over already: this node is its {s.get('role')}")
            continue
        click.echo(f"switched over AIM set {s['aim_set']}: the source is {s['new_source']} now "
                   f"(generation {s['generation']})")
        click.echo(f"  final point:    seq {s['final_seq']}; both sides equal ({s.get('bytes_compared', 0)} bytes "
                   f"compared by digest)")
        click.echo(f"  digests:        source {s.get('source_digest')}, destination {s.get('destination_digest')}")
    if not r.get("already"):
        click.echo(f"  took:           {r['seconds']} s")
