"""Output for the CLI: rich tables on a terminal, JSON with --json (or when piped, on request)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import track
from rich.table import Table

T = TypeVar("T")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_plain))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S%z")
    if isinstance(value, dict | list):
        return json.dumps(value, default=_plain)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str | None = None) -> None:
    out = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(cell(row.get(column)) for column in columns))
    # Not cut to 80 columns when piped or captured: only a terminal's width bounds a table.
    Console(width=None if sys.stdout.isatty() else 4096).print(out)


def show(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool, title: str | None = None
) -> None:
    if as_json:
        emit_json([dict(r) for r in rows])
    elif rows:
        table(rows, columns, title=title)
    else:
        click.echo("(none)")


def result(message: str, data: dict[str, Any], *, as_json: bool) -> None:
    """What a command did: one line for people, or the same facts as JSON."""
    if as_json:
        emit_json(data)
    else:
        click.echo(message)


def progress(items: Sequence[T], description: str, *, enabled: bool = True) -> Iterable[T]:
    """A progress bar on stderr for work over several items, when a person is watching."""
    if not enabled or len(items) < 2 or not sys.stderr.isatty():
        return items
    return track(items, description=description, console=Console(stderr=True), transient=True)
