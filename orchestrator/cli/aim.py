"""CLI verbs for AIM sets, markers and groups (they act on the source node)."""

import sys
from datetime import datetime, timezone

import click

from engine import EngineError, InvalidInput
from policies.durations import DurationError, parse_duration

from ..actions.dr_test import follow_verify
from ..nodes import read_file, read_token
from .storage import Target, json_option, pass_target
from .output import print_fields, print_json, print_table

AIM_COLUMNS = [("name", "NAME"), ("role", "ROLE"), ("generation", "GEN"), ("state", "STATE"), ("source", "SOURCE"),
               ("destination", "DESTINATION"),
               ("queued_bytes", "QUEUED BYTES"), ("lag_seconds", "LAG S"), ("bytes_written", "WRITTEN"),
               ("bytes_sent", "SENT"), ("overflowed", "OVERFLOWED")]
MARKER_COLUMNS = [("id", "ID"), ("aim_set", "AIM SET"), ("group_name", "GROUP"), ("state", "STATE"),
                  ("snapshot", "SNAPSHOT"), ("snapshot_set", "SNAPSHOT SET"), ("point", "POINT"),
                  ("issued_at", "ISSUED"), ("applied_at", "APPLIED"), ("error", "ERROR")]


@click.group()
def aim() -> None:
    """Asynchronous replication of a volume to another node (AIM sets)."""


@aim.command("create")
@click.argument("name")
@click.option("--source", required=True, help="The source volume on this node.")
@click.option("--to", "to", required=True, metavar="HOST:AIMPORT/DESTVOLUME", help="The destination.")
@click.option("--to-token-file", required=True, type=click.Path(dir_okay=False),
              help="The destination node's token file (used for HMAC; never sent).")
@click.option("--journal-limit", default="1GiB", show_default=True,
              help="Past this, the set tracks dirty blocks and resynchronises later.")
@click.option("--to-tls-ca", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Connect with TLS, trusting this certificate (or CA) for the destination's AIM port.")
@json_option
@pass_target
def aim_create(target: Target, name: str, source: str, to: str, to_token_file: str, journal_limit: str,
               to_tls_ca: str | None, as_json: bool) -> None:
    """Create an AIM set; the destination volume must exist with the same size."""
    token = read_token(to_token_file)
    tls_ca = read_file(to_tls_ca, "CA certificate") if to_tls_ca else None
    with target.node() as node:
        info = node.replication.create(name, source, to, token, journal_limit, tls_ca)
    print_json(info) if as_json else click.echo(f"created AIM set {name}: {source} -> {to}")


@aim.command("list")
@json_option
@pass_target
def aim_list(target: Target, as_json: bool) -> None:
    """List AIM sets."""
    with target.node() as node:
        rows = node.replication.list()
    print_json(rows) if as_json else print_table(rows, AIM_COLUMNS, empty="no AIM sets")


@aim.command("info")
@click.argument("name")
@json_option
@pass_target
def aim_info(target: Target, name: str, as_json: bool) -> None:
    """Show one AIM set."""
    with target.node() as node:
        info = node.replication.info(name)
    print_json(info) if as_json else print_fields(info)


@aim.command("status")
@click.argument("name", required=False)
@json_option
@pass_target
def aim_status(target: Target, name: str | None, as_json: bool) -> None:
    """State, queued bytes and entries, lag, bytes written and sent, last applied marker."""
    with target.node() as node:
        rows = [node.replication.info(name)] if name else node.replication.list()
    if as_json:
        print_json(rows[0] if name else rows)
    else:
        for r in rows:
            r["verified"] = _verified(r.get("last_verify"))
        print_table(rows, AIM_COLUMNS + [("verified", "VERIFIED"), ("last_error", "LAST ERROR")], empty="no AIM sets")


def _verified(last: dict | None) -> str:
    """The last verify in a word: when, and whether source and destination were equal."""
    if not last:
        return "never"
    if last.get("state") != "done":
        return str(last.get("state"))
    when = datetime.fromtimestamp(last["verified_at"], timezone.utc).strftime("%Y-%m-%d %H:%M")
    return f"{when} equal" if not last["mismatched_ranges"] else f"{when} {last['mismatched_ranges']} differ"


@aim.command("delete")
@click.argument("name")
@pass_target
def aim_delete(target: Target, name: str) -> None:
    """Delete an AIM set and release its destination volume."""
    with target.node() as node:
        node.replication.delete(name)
    click.echo(f"deleted AIM set {name}")


@aim.command("pause")
@click.argument("name")
@json_option
@pass_target
def aim_pause(target: Target, name: str, as_json: bool) -> None:
    """Stop shipping; writes keep being journaled."""
    with target.node() as node:
        info = node.replication.pause(name)
    print_json(info) if as_json else click.echo(f"paused AIM set {name}")


@aim.command("verify")
@click.argument("name")
@click.option("--repair", is_flag=True, help="Re-send the ranges that differ, then compare them again.")
@click.option("--wait", "wait_for", default="6h", show_default=True,
              help="Stop waiting after this long (the verify goes on at the node).")
@json_option
@pass_target
def aim_verify(target: Target, name: str, repair: bool, wait_for: str, as_json: bool) -> None:
    """Compare source and destination block by block at one write-order point, while replication
    goes on (only digests cross the wire). Exit 1 if ranges differ (after --repair: still differ)."""
    try:
        limit = parse_duration(wait_for)
    except DurationError as e:
        raise InvalidInput(str(e)) from None
    def progress(st: dict) -> None:
        if sys.stderr.isatty():
            click.echo(f"\rverifying {name}: {st['bytes_compared'] >> 20} of {st['size'] >> 20} MiB compared",
                       nl=False, err=True)
    with target.node() as node:
        st = follow_verify(node.replication, name, repair, limit, progress)
    if sys.stderr.isatty():
        click.echo("", err=True)
    if as_json:
        print_json(st)
    if st["state"] == "running":
        raise EngineError(f"verify {st['id']} of {name} still running after {wait_for}: see `aim info {name}`")
    if st["state"] == "failed":
        raise EngineError(f"verify of {name} failed: {st['error']}")
    if not as_json:
        click.echo(f"verified {name}: {st['bytes_compared']} bytes in {st['seconds']}s, "
                   f"{st['mismatched_ranges']} range(s) of {st['range_size'] >> 20} MiB differ"
                   + (f" (repaired {st['repaired_ranges']})" if repair else ""))
        for offset in st["remaining"]:
            click.echo(f"  differs: offset {offset}")
    if st["mismatched_ranges"]:
        raise EngineError(f"{st['mismatched_ranges']} range(s) of {name} differ between source and destination"
                          + ("" if repair else ": run it again with --repair"))


@aim.command("resume")
@click.argument("name")
@json_option
@pass_target
def aim_resume(target: Target, name: str, as_json: bool) -> None:
    """Ship again."""
    with target.node() as node:
        info = node.replication.resume(name)
    print_json(info) if as_json else click.echo(f"resumed AIM set {name}")


# -- markers -----------------------------------------------------------------------------------------
@click.group()
def marker() -> None:
    """Markers: checkpoints in the write stream that enable destination snapshots."""


@marker.command("issue")
@click.argument("aim_set", required=False)
@click.option("--group", default=None, help="Issue one marker across a group's AIM sets.")
@click.option("--snapshot", default=None, help="The pre-configured destination snapshot to enable.")
@click.option("--snapshot-set", default=None, help="With --group: the destination snapshot set to enable.")
@click.option("--label", default=None, help="Name of the destination point in time [default: the UTC issue time].")
@click.option("--wait", is_flag=True, help="Wait until the destination has applied (or failed) it.")
@click.option("--timeout", default="60s", show_default=True, help="With --wait.")
@json_option
@pass_target
def marker_issue(target: Target, aim_set: str | None, group: str | None, snapshot: str | None,
                 snapshot_set: str | None, label: str | None, wait: bool, timeout: str, as_json: bool) -> int:
    """Place a marker in an AIM set's write stream (or a group's)."""
    if bool(aim_set) == bool(group):
        raise click.UsageError("give an AIM set, or --group, not both")
    if group and snapshot:
        raise click.UsageError("a group marker enables a snapshot set: use --snapshot-set")
    try:
        seconds = parse_duration(timeout)
    except DurationError as e:
        raise InvalidInput(str(e)) from None
    with target.node() as node:
        repl = node.replication
        m = repl.issue_group_marker(group, snapshot_set, label) if group else repl.issue_marker(aim_set, snapshot, label)
        if wait and m["state"] == "issued":
            m = repl.wait(m["id"], seconds)
    if as_json:
        print_json(m)
    else:
        where = f"group {group}" if group else aim_set
        click.echo(f"marker {m['id']} on {where}: {m['state']}"
                   + (f", point {m['point']}" if m.get("point") else "")
                   + (f" ({m['error']})" if m.get("error") else ""))
    if m["state"] == "failed":
        click.echo(f"aimsnap: error: marker {m['id']} failed: {m['error']}", err=True)
        return 1
    if wait and m["state"] == "issued":
        click.echo(f"aimsnap: error: marker {m['id']} not applied within {timeout}", err=True)
        return 1
    return 0


@marker.command("list")
@click.option("--aim-set", default=None)
@click.option("--limit", default=100, show_default=True)
@json_option
@pass_target
def marker_list(target: Target, aim_set: str | None, limit: int, as_json: bool) -> None:
    """List markers, newest first."""
    with target.node() as node:
        rows = node.replication.markers(aim_set, limit)
    print_json(rows) if as_json else print_table(rows, MARKER_COLUMNS, empty="no markers")


@marker.command("show")
@click.argument("ref", metavar="ID")
@json_option
@pass_target
def marker_show(target: Target, ref: str, as_json: bool) -> None:
    """Show a marker, or a group marker by its id."""
    with target.node() as node:
        m = node.replication.show(ref)
    if as_json:
        print_json(m)
        return
    members = m.pop("members", None)
    print_fields(m)
    if members:
        click.echo("")
        print_table(members, MARKER_COLUMNS)


# -- groups ----------------------------------------------------------------------------------------------
@click.group()
def group() -> None:
    """Groups of AIM sets whose markers share one write-order point."""


@group.command("create")
@click.argument("name")
@click.option("--members", required=True, help="Comma-separated AIM set names.")
@json_option
@pass_target
def group_create(target: Target, name: str, members: str, as_json: bool) -> None:
    """Create a group."""
    names = [m.strip() for m in members.split(",") if m.strip()]
    with target.node() as node:
        info = node.replication.create_group(name, names)
    print_json(info) if as_json else click.echo(f"created group {name}: {', '.join(names)}")


@group.command("list")
@json_option
@pass_target
def group_list(target: Target, as_json: bool) -> None:
    """List groups."""
    with target.node() as node:
        rows = node.replication.list_groups()
    print_json(rows) if as_json else print_table(rows, [("name", "NAME"), ("members", "MEMBERS")], empty="no groups")


@group.command("delete")
@click.argument("name")
@pass_target
def group_delete(target: Target, name: str) -> None:
    """Delete a group (its AIM sets stay)."""
    with target.node() as node:
        node.replication.delete_group(name)
    click.echo(f"deleted group {name}")


COMMANDS = (aim, marker, group)
