"""CLI verbs that use a recovery point: writable clones (a DR test without stopping replication)
and restoring a volume in place."""

import click

from .output import print_fields, print_json, print_table
from .storage import Target, json_option, pass_target, volume


@click.group()
def clone() -> None:
    """Writable clones of recovery points, exported over NBD under their own name."""


@clone.command("create")
@click.argument("name")
@click.option("--from", "origin", required=True, metavar="SNAPSHOT@POINT",
              help="A point in time, or a complete-image SNAPSHOT (its current image).")
@json_option
@pass_target
def clone_create(target: Target, name: str, origin: str, as_json: bool) -> None:
    """Create a clone: copy-on-write, nothing is copied; writes to it never change the point."""
    with target.node() as node:
        info = node.create_clone(name, origin)
    print_json(info) if as_json else click.echo(f"created clone {name} of {origin} (NBD export {name})")


@clone.command("list")
@json_option
@pass_target
def clone_list(target: Target, as_json: bool) -> None:
    """List clones: what each was made from, when, and what has been written to it."""
    with target.node() as node:
        rows = node.list_clones()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("name", "NAME"), ("from", "FROM"), ("created_at", "CREATED"),
                           ("bytes_written", "WRITTEN"), ("hosts", "NBD CLIENTS")], empty="no clones")


@clone.command("info")
@click.argument("name")
@json_option
@pass_target
def clone_info(target: Target, name: str, as_json: bool) -> None:
    """Show one clone."""
    with target.node() as node:
        info = node.clone_info(name)
    print_json(info) if as_json else print_fields(info)


@clone.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even while NBD clients have it open (their IO fails).")
@pass_target
def clone_delete(target: Target, name: str, force: bool) -> None:
    """Delete a clone and what was written to it; its point may then be pruned again."""
    with target.node() as node:
        node.delete_clone(name, force)
    click.echo(f"deleted clone {name}")


@volume.command("restore")
@click.argument("name")
@click.option("--from", "origin", required=True, metavar="SNAPSHOT@POINT",
              help="A point in time of the volume, or a complete-image SNAPSHOT of it.")
@click.option("--force", is_flag=True, help="Restore even while NBD clients have the volume open.")
@json_option
@pass_target
def volume_restore(target: Target, name: str, origin: str, force: bool, as_json: bool) -> None:
    """Make the volume's content the point's, in place, copying only the blocks that changed since.
    A point named pre-restore.TIMESTAMP is taken first on each differential snapshot of the volume,
    so that a wrong restore can be undone."""
    with target.node() as node:
        result = node.restore_volume(name, origin, force)
    if as_json:
        print_json(result)
        return
    kept = ", ".join(result["pre_restore_points"]) or "none (the volume has no differential snapshot)"
    click.echo(f"restored {name} from {origin}: {result['blocks']} block(s), {result['bytes']} bytes copied "
               f"in {result['seconds']}s; undo with the point(s) {kept}")


COMMANDS = (clone,)
