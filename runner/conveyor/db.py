"""Database connections for the CLI: the URL from flag or environment, else the embedded cluster."""

from __future__ import annotations

from typing import Any

import click
import psycopg
from psycopg.rows import dict_row

from conveyor.cluster import Cluster
from conveyor.errors import ConveyorError


def resolve_database_url(database_url: str | None) -> str:
    """The given URL, or the embedded cluster's (started if it is not running)."""
    if database_url:
        return database_url
    cluster = Cluster.embedded()
    if cluster.start():
        click.echo(f"started the embedded PostgreSQL on port {cluster.port}", err=True)
    return cluster.url()


def connect(database_url: str | None) -> psycopg.Connection[dict[str, Any]]:
    """An autocommit connection with rows as dicts; a clear error when the database is away."""
    url = resolve_database_url(database_url)
    try:
        return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ConveyorError(f"cannot connect to the database: {first}") from exc


def describe_db_error(exc: psycopg.Error) -> str:
    """One readable line (plus detail and hint) from a database error."""
    diag = exc.diag
    text = diag.message_primary or str(exc).strip().splitlines()[0]
    if diag.message_detail:
        text += "\n" + diag.message_detail
    if diag.message_hint:
        text += f"\nhint: {diag.message_hint}"
    return text
