"""`conveyor connections ...`: a tenant's named credentials, encrypted before they reach the database."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor import output
from conveyor.commands.common import (
    database_option,
    fail_cleanly,
    json_option,
    load_json_option,
    tenant_option,
)
from conveyor.db import resolve_database_url
from conveyor.errors import ConveyorError


def _secret_box(required: bool) -> Any:
    import os

    from conveyor.secrets import SecretBox

    if not os.environ.get("CONVEYOR_SECRET_KEY", "").strip():
        if required:
            raise ConveyorError(
                "CONVEYOR_SECRET_KEY is not set (generate one with `conveyor connections keygen`)"
            )
        return None
    return SecretBox.from_env()


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    value = load_json_option(text, what)
    if not isinstance(value, dict):
        raise ConveyorError(f"{what} must be a JSON object")
    return value


@click.group()
def connections() -> None:
    """Manage connections (SMTP servers, webhooks, Slack, Discord, SMS) of a tenant.

    Secrets are encrypted with CONVEYOR_SECRET_KEY before they reach the database and are
    never printed.
    """


@connections.command("keygen")
def connections_keygen() -> None:
    """Print a new key for CONVEYOR_SECRET_KEY."""
    from conveyor.secrets import generate_key

    click.echo(generate_key())


@connections.command("add")
@database_option
@tenant_option
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["smtp", "webhook", "slack", "discord", "twilio"]),
)
@click.option(
    "--config",
    "config_json",
    help='Non-secret settings as a JSON object, e.g. \'{"host": "smtp.example.com"}\'. A webhook'
    ' connection names where its credentials may go: "url" and/or "allowed_hosts" (docs/connections.md).',
)
@click.option(
    "--secret-file",
    type=click.File("r"),
    help="Read the secret fields (a JSON object) from this file; '-' reads stdin. Not taken"
    " as an argument so it stays out of shell history and process lists.",
)
@click.option("--replace", is_flag=True, help="Replace an existing connection of that name.")
@click.argument("name")
@json_option
@fail_cleanly
def connections_add(
    database_url: str | None,
    tenant: str,
    kind: str,
    config_json: str | None,
    secret_file: Any,
    replace: bool,
    name: str,
    as_json: bool,
) -> None:
    """Add (or with --replace, replace) the connection NAME."""
    import psycopg

    from conveyor import connections as conns

    config = _json_object(config_json, "--config")
    secret = _json_object(secret_file.read() if secret_file else None, "the secret")
    box = _secret_box(required=bool(secret))
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        conns.add(
            conn, box, tenant_id=tenant, name=name, kind=kind, config=config, secret=secret, replace=replace
        )
    output.result(
        f"connection {name} ({kind}) saved for tenant {tenant}",
        {"tenant": tenant, "name": name, "kind": kind, "saved": True},
        as_json=as_json,
    )


@connections.command("list")
@database_option
@tenant_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def connections_list(database_url: str | None, tenant: str, as_json: bool) -> None:
    """List a tenant's connections (settings only; secrets are never shown)."""
    import psycopg

    from conveyor import connections as conns

    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        rows = conns.list_connections(conn, tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "config", "secret", "updated")
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            json.dumps(row["config"]),
            "set" if row["has_secret"] else "-",
            str(row["updated_at"]),
        )
    Console().print(table)


@connections.command("remove")
@database_option
@tenant_option
@click.argument("name")
@json_option
@fail_cleanly
def connections_remove(database_url: str | None, tenant: str, name: str, as_json: bool) -> None:
    """Remove the connection NAME."""
    import psycopg

    from conveyor import connections as conns

    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        if not conns.remove(conn, tenant, name):
            raise ConveyorError(f"tenant {tenant!r} has no connection named {name!r}")
    output.result(
        f"connection {name} removed", {"tenant": tenant, "name": name, "removed": True}, as_json=as_json
    )


@connections.command("test")
@database_option
@tenant_option
@click.option(
    "--allow-private-networks",
    default="",
    envvar="CONVEYOR_ALLOW_PRIVATE_NETWORKS",
    help="As for `conveyor run` [env CONVEYOR_ALLOW_PRIVATE_NETWORKS].",
)
@click.argument("name")
@json_option
@fail_cleanly
def connections_test(
    database_url: str | None, tenant: str, allow_private_networks: str, name: str, as_json: bool
) -> None:
    """Check that NAME decrypts and its endpoint is reachable (sends no message)."""
    import psycopg

    from conveyor import connections as conns
    from conveyor.connection_check import check
    from conveyor.netguard import NetworkPolicy

    box = _secret_box(required=False)
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        connection = conns.load(conn, box, tenant, name)
    try:
        policy = NetworkPolicy.parse(allow_private_networks)
    except ValueError as exc:
        raise ConveyorError(str(exc)) from exc
    verdict = check(connection, policy)
    output.result(
        f"connection {name} ({connection.kind}): {verdict}",
        {"tenant": tenant, "name": name, "kind": connection.kind, "result": verdict},
        as_json=as_json,
    )


@connections.command("rotate")
@database_option
@click.option("--tenant", help="Only this tenant's connections (default: every tenant).")
@json_option
@fail_cleanly
def connections_rotate(database_url: str | None, tenant: str | None, as_json: bool) -> None:
    """Re-encrypt every secret under the first key of CONVEYOR_SECRET_KEY."""
    import psycopg

    from conveyor import connections as conns

    box = _secret_box(required=True)
    with psycopg.connect(resolve_database_url(database_url), autocommit=True) as conn:
        count = conns.rotate(conn, box, tenant)
    output.result(
        f"re-encrypted {count} secret(s) under the first key", {"reencrypted": count}, as_json=as_json
    )
