"""How CLI verbs print: JSON for machines (``--json``), rich tables for people."""

import json
import sys
from collections.abc import Sequence

import click
from rich.console import Console
from rich.table import Table


def print_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], *, empty: str = "nothing") -> None:
    """``columns`` are (key, heading) pairs; a missing key prints as '-'."""
    if not rows:
        click.echo(f"({empty})")
        return
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for _, heading in columns:
        table.add_column(heading)
    for row in rows:
        table.add_row(*[_cell(row.get(key)) for key, _ in columns])
    Console(file=sys.stdout, width=200, soft_wrap=True).print(table)


def print_fields(obj: dict) -> None:
    """One ``key: value`` line per field, nested values as compact JSON."""
    width = max((len(k) for k in obj), default=0)
    for key, value in obj.items():
        click.echo(f"{key:<{width}}  {_cell(value)}")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str) if value else "-"
    return str(value)
