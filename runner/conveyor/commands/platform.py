"""Connecting a platform (docs/integrate.md): `conveyor tables`, `entities`, `api-keys` and
`webhooks`. Each command forwards to the engine's SQL function for it (conveyor.watch,
conveyor.register_entity, conveyor.create_api_key, conveyor.rotate_webhook_secret, ...)."""

from __future__ import annotations

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, tenant_option
from conveyor.db import connect
from conveyor.errors import ConveyorError

# --- conveyor tables ----------------------------------------------------------------


@click.group()
def tables() -> None:
    """The platform's tables whose changes become events (docs/integrate.md)."""


@tables.command("watch")
@click.argument("table")
@click.option("--module", required=True, help="The events' first part: crm gives crm.<entity>.created.")
@click.option("--entity", help="The events' second part (default: the table's name).")
@click.option(
    "--tenant-column", default="tenant_id", show_default=True, help="The column holding the tenant id."
)
@click.option("--id-column", default="id", show_default=True, help="The column holding the row's id.")
@database_option
@json_option
@fail_cleanly
def watch(
    table: str,
    module: str,
    entity: str | None,
    tenant_column: str,
    id_column: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Capture TABLE's inserts, updates and deletes as <module>.<entity>.created|updated|deleted."""
    with connect(database_url) as conn:
        conn.execute(
            "select conveyor.watch(%s::regclass, %s, %s, %s, %s)",
            (table, module, entity, tenant_column, id_column),
        )
        row = conn.execute(
            "select module, entity from conveyor.watched_tables where table_name = %s::regclass", (table,)
        ).fetchone()
    assert row is not None
    prefix = f"{row['module']}.{row['entity']}"
    output.result(
        f"watching {table}: events {prefix}.created|updated|deleted"
        f" (tenant column {tenant_column}, id column {id_column})",
        {"table": table, "events": prefix, "tenant_column": tenant_column, "id_column": id_column},
        as_json=as_json,
    )


@tables.command("unwatch")
@click.argument("table")
@database_option
@json_option
@fail_cleanly
def unwatch(table: str, database_url: str | None, as_json: bool) -> None:
    """Stop capturing TABLE (changes captured so far still become events)."""
    with connect(database_url) as conn:
        removed = conn.execute("select conveyor.unwatch(%s::regclass) as removed", (table,)).fetchone()
    if not (removed and removed["removed"]):
        raise ConveyorError(f"table {table} is not watched (see `conveyor tables list`)")
    output.result(f"no longer watching {table}", {"table": table, "unwatched": True}, as_json=as_json)


@tables.command("list")
@database_option
@json_option
@fail_cleanly
def list_tables(database_url: str | None, as_json: bool) -> None:
    """The watched tables, their events and their tenant and id columns."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select table_name::text as table, module || '.' || entity as events,"
            " tenant_column::text as tenant_column, id_column::text as id_column, created_at"
            " from conveyor.watched_tables order by 1"
        ).fetchall()
    output.show(
        [dict(r) for r in rows],
        ["table", "events", "tenant_column", "id_column", "created_at"],
        as_json=as_json,
    )


# --- conveyor entities --------------------------------------------------------------


@click.group()
def entities() -> None:
    """The platform's entities that data steps read and change (docs/integrate.md)."""


@entities.command("add")
@click.argument("entity")
@click.argument("table")
@click.option("--id-column", default="id", show_default=True, help="The column holding the row's id.")
@click.option(
    "--tenant-column", default="tenant_id", show_default=True, help="The column holding the tenant id."
)
@click.option("--tags-column", help="A text[] column that add_tag / remove_tag change.")
@database_option
@json_option
@fail_cleanly
def add_entity(
    entity: str,
    table: str,
    id_column: str,
    tenant_column: str,
    tags_column: str | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Register ENTITY as the rows of TABLE (again: replace its registration)."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.register_entity(%s, %s::regclass, %s, %s, %s) as created",
            (entity, table, id_column, tenant_column, tags_column),
        ).fetchone()
    created = bool(row and row["created"])
    output.result(
        f"entity {entity}: table {table} ({'registered' if created else 'registration replaced'})",
        {"entity": entity, "table": table, "created": created},
        as_json=as_json,
    )


@entities.command("list")
@database_option
@json_option
@fail_cleanly
def list_entities(database_url: str | None, as_json: bool) -> None:
    """The registered entities and their tables' columns."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select entity, table_name::text as table, id_column::text as id_column,"
            " tenant_column::text as tenant_column, tags_column::text as tags_column"
            " from conveyor.entities order by entity"
        ).fetchall()
    output.show(
        [dict(r) for r in rows],
        ["entity", "table", "id_column", "tenant_column", "tags_column"],
        as_json=as_json,
    )


# --- conveyor api-keys --------------------------------------------------------------


@click.group("api-keys")
def api_keys() -> None:
    """A tenant's API keys for POST /api/workflows/<slug>/runs (docs/integrate.md)."""


@api_keys.command("add")
@click.argument("name")
@tenant_option
@database_option
@json_option
@fail_cleanly
def add_key(name: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Create the tenant's API key NAME and print it (shown only this once)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.create_api_key(%s, %s) as key", (tenant, name)).fetchone()
    key = row["key"] if row else None
    output.result(str(key), {"tenant": tenant, "name": name, "key": key}, as_json=as_json)


@api_keys.command("list")
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_keys(tenant: str, database_url: str | None, as_json: bool) -> None:
    """The tenant's API keys (names and dates; the keys themselves are stored only as hashes)."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select name, created_at, last_used_at, revoked_at from conveyor.api_keys"
            " where tenant_id = %s order by name",
            (tenant,),
        ).fetchall()
    output.show(
        [dict(r) for r in rows], ["name", "created_at", "last_used_at", "revoked_at"], as_json=as_json
    )


@api_keys.command("revoke")
@click.argument("name")
@tenant_option
@database_option
@json_option
@fail_cleanly
def revoke_key(name: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Revoke the tenant's API key NAME: requests with it are refused from now on."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.revoke_api_key(%s, %s) as done", (tenant, name)).fetchone()
    if not (row and row["done"]):
        raise ConveyorError(
            f'tenant "{tenant}" has no active API key named "{name}" (see `conveyor api-keys list`)'
        )
    output.result(
        f"API key {name} revoked", {"tenant": tenant, "name": name, "revoked": True}, as_json=as_json
    )


# --- conveyor webhooks --------------------------------------------------------------


@click.group()
def webhooks() -> None:
    """The tenant's inbound webhook endpoints, one per workflow with a webhook trigger."""


@webhooks.command("list")
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_webhooks(tenant: str, database_url: str | None, as_json: bool) -> None:
    """Each endpoint: its workflow, path, methods and calls (`webhooks rotate` prints a secret)."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select w.slug as workflow, '/hooks/' || e.path_token as path,"
            " array_to_string(e.allowed_methods, ',') as methods, e.call_count as calls, e.last_called_at"
            " from conveyor.webhook_endpoints as e join conveyor.workflows as w using (workflow_id)"
            " where w.tenant_id = %s order by w.slug",
            (tenant,),
        ).fetchall()
    output.show(
        [dict(r) for r in rows], ["workflow", "path", "methods", "calls", "last_called_at"], as_json=as_json
    )


@webhooks.command("rotate")
@click.argument("workflow")
@tenant_option
@database_option
@json_option
@fail_cleanly
def rotate(workflow: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Give WORKFLOW's endpoint a new signing secret and print it (senders must switch to it)."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.rotate_webhook_secret(%s, %s) as secret", (tenant, workflow)
        ).fetchone()
    secret = row["secret"] if row else None
    output.result(str(secret), {"tenant": tenant, "workflow": workflow, "secret": secret}, as_json=as_json)
