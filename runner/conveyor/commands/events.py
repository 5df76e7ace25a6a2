"""`conveyor events ...`: emit and replay events, and see what each one did."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
from psycopg.types.json import Jsonb

from conveyor import output
from conveyor.commands.common import (
    database_option,
    fail_cleanly,
    json_option,
    load_json_option,
    tenant_option,
)
from conveyor.db import connect


@click.group()
def events() -> None:
    """Emit and inspect events."""


@events.command("list")
@click.option("--type", "event_type", help="Only this event type.")
@click.option("--limit", default=50, show_default=True, help="At most this many events (1 to 1000).")
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_events(
    event_type: str | None, limit: int, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """List recent events, newest first, with what each did: started N, resumed N, or why nothing."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select event_id as id, event_type as type, source, entity_type, entity_id, depth, occurred_at,"
            " dispatched_at, started as executions, resumed, reasons, outcome"
            " from conveyor.list_events(%s, %s, %s)",
            (tenant, event_type, limit),
        ).fetchall()
    output.show(
        rows,
        ["id", "type", "entity_id", "depth", "occurred_at", "dispatched_at", "outcome"],
        as_json=as_json,
    )


@events.command("show")
@click.argument("event_id", type=int)
@tenant_option
@database_option
@json_option
@fail_cleanly
def show_event(event_id: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """What an event did: for each workflow its type reaches, started execution N or why
    not (a limit, run once, a budget, its filter or condition false); the waits it resumed,
    and every reason logged for it (no wait matched, a dispatch error)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.explain_event(%s, %s) as e", (tenant, event_id)).fetchone()
    assert row is not None
    explained: dict[str, Any] = row["e"]
    if as_json:
        output.emit_json(explained)
        return
    event = explained["event"]
    dispatched = (
        f"dispatched {output.timestamp(event['dispatched_at'])}"
        if event["dispatched_at"]
        else "not dispatched yet"
    )
    click.echo(
        f"event {event_id}: {event['event_type']}  occurred {output.timestamp(event['occurred_at'])}  {dispatched}"
    )
    facts = [f"depth {event['depth']}"]
    if event["caused_by_execution_id"]:
        facts.append(f"emitted by execution {event['caused_by_execution_id']}")
    if event["source"]:
        facts.append(f"source {event['source']}")
    if event["entity_id"]:
        facts.append(f"entity {event['entity_type'] or '-'} {event['entity_id']}")
    click.echo("  ".join(facts))
    click.echo(f"payload: {json.dumps(event['payload'])}")
    click.echo(f"outcome: {explained['outcome']}")
    for workflow in explained["workflows"]:
        click.echo(f"  {workflow['workflow']}: {workflow['message']}")
    for key, columns in (
        ("started", ["execution_id", "workflow", "version", "status", "error"]),
        ("resumed", ["execution_id", "workflow", "version", "step_id", "visit", "resumed_at", "status"]),
        ("reasons", ["logged_at", "level", "reason", "workflow", "message"]),
    ):
        if explained[key]:
            output.table(_rows(explained[key]), columns, title=key)


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows from JSON with their times (`*_at`) as datetimes, which tables print alike."""
    return [
        {
            k: datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str) else v
            for k, v in r.items()
        }
        for r in rows
    ]


@events.command("emit")
@click.argument("event_type")
@click.option("--payload", default="{}", help="The payload as JSON.")
@click.option("--entity-type")
@click.option("--entity-id")
@click.option("--dedupe-key")
@tenant_option
@database_option
@json_option
@fail_cleanly
def emit(
    event_type: str,
    payload: str,
    entity_type: str | None,
    entity_id: str | None,
    dedupe_key: str | None,
    tenant: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Emit an event (it is dispatched by the next tick of a runner or pg_cron)."""
    data = load_json_option(payload, "--payload")
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.emit(%s, %s, %s, %s, %s, %s) as id",
            (tenant, event_type, Jsonb(data), entity_type, entity_id, dedupe_key),
        ).fetchone()
    event_id = row["id"] if row else None
    output.result(
        f"event {event_id}: {event_type}", {"event_id": event_id, "event_type": event_type}, as_json=as_json
    )


@events.command("replay")
@click.argument("event_id", type=int)
@tenant_option
@database_option
@json_option
@fail_cleanly
def replay(event_id: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Emit a copy of an event so its workflows run again (run-once settings still apply)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.replay_event(%s, %s) as id", (tenant, event_id)).fetchone()
    new_id = row["id"] if row else None
    output.result(
        f"event {new_id}: replay of {event_id}", {"event_id": new_id, "replay_of": event_id}, as_json=as_json
    )
