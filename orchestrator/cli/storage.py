"""CLI verbs for volumes, snapshots and snapshot sets on a node root."""

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import click

from engine import InvalidInput, Node, NotFound, parse_size, read_chunks
from engine.client.remote import RemoteNode
from engine.interface import NodeAPI
from engine.storage.volume import check_host_write, check_range

from ..nodes import read_token
from .output import print_fields, print_json, print_table

_CHUNK = 1 << 20


@dataclass
class Target:
    """Where verbs act: a local node root, or a node's control API (``--node``)."""

    root: str
    node_url: str | None = None
    token_file: str | None = None
    node_ca: str | None = None  # the CA an https:// node must present

    @contextlib.contextmanager
    def node(self, *, create: bool = False, timeout: float = 60.0) -> Iterator[NodeAPI]:
        """``timeout``: how long one control API request may take (a switchover's drain)."""
        node: NodeAPI
        if self.node_url:
            node = RemoteNode(self.node_url, read_token(self.token_file), timeout, ca=self.node_ca)
        else:
            node = Node(self.root, create=create)
        try:
            yield node
        finally:
            node.close()


pass_target = click.make_pass_decorator(Target)


class ByteCount(click.ParamType):
    """A byte count or offset: ``4096``, ``64KiB``, ``1GiB`` (0 allowed)."""

    name = "BYTES"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int):
            return value
        if str(value).strip() == "0":
            return 0
        try:
            return parse_size(value)
        except InvalidInput as e:
            self.fail(str(e), param, ctx)


BYTES = ByteCount()
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _split_point(ref: str) -> tuple[str, str | None]:
    name, sep, point = ref.partition("@")
    if sep and not point:
        raise click.BadParameter(f"{ref!r}: write NAME@POINT with a point name after '@'")
    return name, (point if sep else None)


# -- volume ----------------------------------------------------------------------------------------
@click.group()
def volume() -> None:
    """Create, inspect, read and write volumes."""


@volume.command("create")
@click.argument("name")
@click.option("--size", required=True, help="Size with a binary unit, e.g. 64MiB, 1GiB.")
@click.option("--block-size", default="64KiB", show_default=True, help="Tracking and copy granularity.")
@json_option
@pass_target
def volume_create(target: Target, name: str, size: str, block_size: str, as_json: bool) -> None:
    """Create a volume (a sparse file: it takes no space until written)."""
    with target.node(create=True) as node:
        info = node.create_volume(name, size, block_size)
    print_json(info) if as_json else click.echo(f"created volume {name} ({info['size_human']})")


@volume.command("list")
@json_option
@pass_target
def volume_list(target: Target, as_json: bool) -> None:
    """List volumes."""
    with target.node() as node:
        rows = node.list_volumes()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("name", "NAME"), ("size_human", "SIZE"), ("role", "ROLE"),
                           ("allocated", "ALLOCATED"), ("snapshots", "SNAPSHOTS")], empty="no volumes")


@volume.command("info")
@click.argument("name")
@json_option
@pass_target
def volume_info(target: Target, name: str, as_json: bool) -> None:
    """Show one volume."""
    with target.node() as node:
        info = node.volume_info(name)
    print_json(info) if as_json else print_fields(info)


@volume.command("delete")
@click.argument("name")
@pass_target
def volume_delete(target: Target, name: str) -> None:
    """Delete a volume (refused while snapshots use it)."""
    with target.node() as node:
        node.delete_volume(name)
    click.echo(f"deleted volume {name}")


@volume.command("write")
@click.argument("name")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--offset", type=BYTES, default=0, show_default=True, help="Byte offset to write at.")
@pass_target
def volume_write(target: Target, name: str, file: str, offset: int) -> None:
    """Write FILE (or standard input) into a volume at --offset, durably. The whole range is
    checked before anything is written."""
    with target.node() as node:
        info = _data_info(node, name)
        with _open_input(file, info["size"] - offset) as (src, length):
            check_host_write(name, info["size"], info["role"], offset, length)
            pos = 0
            while chunk := src.read(_CHUNK):
                node.write(name, offset + pos, chunk)
                pos += len(chunk)
            node.flush(name)
    click.echo(f"wrote {length} bytes to {name} at offset {offset}", err=True)


def _data_info(node: NodeAPI, name: str) -> dict:
    """What ``volume read`` and ``volume write`` act on: a volume, or a clone (role ``volume``: writable)."""
    try:
        return node.volume_info(name)
    except NotFound:
        if name not in {c["name"] for c in node.list_clones()}:
            raise NotFound(f"no volume or clone {name!r}") from None
        return {**node.clone_info(name), "role": "volume"}


@contextlib.contextmanager
def _open_input(file: str, room: int) -> Iterator[tuple]:
    """The input and its length. Standard input is spooled (up to one byte more than fits) so a
    too-long stream is refused before the first write."""
    if file != "-":
        with open(file, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    with tempfile.SpooledTemporaryFile(max_size=8 * _CHUNK) as spool:
        limit = max(room, 0) + 1
        while limit > 0 and (chunk := sys.stdin.buffer.read(min(_CHUNK, limit))):
            spool.write(chunk)
            limit -= len(chunk)
        length = spool.tell()
        spool.seek(0)
        yield spool, length


@volume.command("read")
@click.argument("name")
@click.option("--offset", type=BYTES, default=0, show_default=True)
@click.option("--length", type=BYTES, default=None, help="Bytes to read [default: to the end].")
@pass_target
def volume_read(target: Target, name: str, offset: int, length: int | None) -> None:
    """Read a volume's bytes to standard output."""
    with target.node() as node:
        size = _data_info(node, name)["size"]
        length = max(size - offset, 0) if length is None else length
        check_range(name, size, offset, length)
        _stream(read_chunks(lambda o, n: node.read(name, o, n), offset, length))


def _stream(chunks: Iterator[bytes]) -> None:
    out = sys.stdout.buffer
    for chunk in chunks:
        out.write(chunk)
    out.flush()


# -- snapshot --------------------------------------------------------------------------------------
@click.group()
def snapshot() -> None:
    """Pre-configure, enable, read and delete snapshot relationships."""


@snapshot.command("create")
@click.argument("name")
@click.option("--source", required=True, help="The volume to snapshot.")
@click.option("--type", "type_", required=True, type=click.Choice(["complete-image", "differential"]))
@json_option
@pass_target
def snapshot_create(target: Target, name: str, source: str, type_: str, as_json: bool) -> None:
    """Pre-configure a snapshot relationship of a volume."""
    with target.node() as node:
        info = node.create_snapshot(name, source, type_)
    print_json(info) if as_json else click.echo(f"created {type_} snapshot {name} of {source}")


@snapshot.command("enable")
@click.argument("name")
@click.option("--point", default=None, help="Name of the new point in time (differential) [default: UTC time].")
@json_option
@pass_target
def snapshot_enable(target: Target, name: str, point: str | None, as_json: bool) -> None:
    """Enable a snapshot: increment a complete image, or add a point in time."""
    with target.node() as node:
        result = node.enable_snapshot(name, point)
    if as_json:
        print_json(result)
    elif result["point"]:
        click.echo(f"enabled {name}@{result['point']}")
    else:
        click.echo(f"incremented {name}: {result['blocks']} blocks, {result['bytes']} bytes "
                   f"in {result['seconds']:.3f}s")


@snapshot.command("list")
@json_option
@pass_target
def snapshot_list(target: Target, as_json: bool) -> None:
    """List snapshot relationships."""
    with target.node() as node:
        rows = node.list_snapshots()
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["points_count"] = len(row.get("points", [])) if row["type"] == "differential" else None
    print_table(rows, [("name", "NAME"), ("type", "TYPE"), ("source", "SOURCE"), ("state", "STATE"),
                       ("enables", "ENABLES"), ("points_count", "POINTS"), ("last_enabled_at", "LAST ENABLED")],
                empty="no snapshots")


@snapshot.command("info")
@click.argument("name")
@json_option
@pass_target
def snapshot_info(target: Target, name: str, as_json: bool) -> None:
    """Show one snapshot relationship and its points in time."""
    with target.node() as node:
        info = node.snapshot_info(name)
    if as_json:
        print_json(info)
        return
    points = info.pop("points", None)
    print_fields(info)
    if points is not None:
        click.echo("")
        print_table(points, [("name", "POINT"), ("created_at", "CREATED"), ("stored_blocks", "STORED BLOCKS")],
                    empty="no points in time")


@snapshot.command("delete")
@click.argument("ref", metavar="NAME[@POINT]")
@pass_target
def snapshot_delete(target: Target, ref: str) -> None:
    """Delete a relationship, or one point in time of a differential snapshot."""
    name, point = _split_point(ref)
    with target.node() as node:
        if point is None:
            node.delete_snapshot(name)
        else:
            node.delete_point(name, point)
    click.echo(f"deleted snapshot {ref}")


@snapshot.command("read")
@click.argument("ref", metavar="NAME[@POINT]")
@click.option("--offset", type=BYTES, default=0, show_default=True)
@click.option("--length", type=BYTES, default=None, help="Bytes to read [default: to the end].")
@pass_target
def snapshot_read(target: Target, ref: str, offset: int, length: int | None) -> None:
    """Read a snapshot (or one point in time) to standard output."""
    name, point = _split_point(ref)
    with target.node() as node:
        size = node.snapshot_info(name)["size"]
        length = max(size - offset, 0) if length is None else length
        node.read_snapshot(name, point, 0, 0)  # validates the reference before streaming
        check_range(name, size, offset, length)
        _stream(read_chunks(lambda o, n: node.read_snapshot(name, point, o, n), offset, length))


# -- snapshot-set ----------------------------------------------------------------------------------
@click.group("snapshot-set")
def snapshot_set() -> None:
    """Enable several snapshots at one write-order point."""


@snapshot_set.command("create")
@click.argument("name")
@click.option("--members", required=True, help="Comma-separated snapshot names.")
@json_option
@pass_target
def snapshot_set_create(target: Target, name: str, members: str, as_json: bool) -> None:
    """Create a snapshot set of pre-configured snapshots."""
    names = [m.strip() for m in members.split(",") if m.strip()]
    with target.node() as node:
        info = node.create_snapshot_set(name, names)
    print_json(info) if as_json else click.echo(f"created snapshot set {name}: {', '.join(names)}")


@snapshot_set.command("enable")
@click.argument("name")
@click.option("--point", default=None, help="Name of the new points in time [default: UTC time].")
@json_option
@pass_target
def snapshot_set_enable(target: Target, name: str, point: str | None, as_json: bool) -> None:
    """Enable every member at one write-order point."""
    with target.node() as node:
        result = node.enable_snapshot_set(name, point)
    if as_json:
        print_json(result)
    else:
        click.echo(f"enabled snapshot set {name} at {result['enabled_at']}"
                   + (f" (point {result['point']})" if result["point"] else ""))


@snapshot_set.command("list")
@json_option
@pass_target
def snapshot_set_list(target: Target, as_json: bool) -> None:
    """List snapshot sets."""
    with target.node() as node:
        rows = node.list_snapshot_sets()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("name", "NAME"), ("members", "MEMBERS"), ("enables", "ENABLES"),
                           ("last_enabled_at", "LAST ENABLED")], empty="no snapshot sets")


@snapshot_set.command("delete")
@click.argument("name")
@pass_target
def snapshot_set_delete(target: Target, name: str) -> None:
    """Delete a snapshot set (its members stay)."""
    with target.node() as node:
        node.delete_snapshot_set(name)
    click.echo(f"deleted snapshot set {name}")


COMMANDS = (volume, snapshot, snapshot_set)
