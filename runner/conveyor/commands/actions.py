"""`conveyor actions ...`: the action queue's dead letters (docs/queue.md)."""

from __future__ import annotations

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, tenant_option
from conveyor.db import connect


@click.group()
def actions() -> None:
    """The action queue: dead letters, and sending them again."""


@actions.command("dead")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@tenant_option
@database_option
@json_option
@fail_cleanly
def dead(limit: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """List the tenant's dead letters, newest first: messages no longer redelivered, with why."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select dead_letter_id as id, msg_id, execution_id as execution, step_id as step, step_run_id,"
            " reason, attempts, dead_at, last_error, message"
            " from conveyor.list_dead_letters(%s, %s)",
            (tenant, limit),
        ).fetchall()
    output.show(
        rows, ["id", "execution", "step", "reason", "attempts", "dead_at", "last_error"], as_json=as_json
    )


@actions.command("requeue")
@click.argument("dead_letter_id", type=int)
@tenant_option
@database_option
@json_option
@fail_cleanly
def requeue(dead_letter_id: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Send a dead letter's action again: its step runs again (next attempt, same idempotency
    key) and the dead letter is removed."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.requeue_dead_letter(%s, %s) as msg_id", (tenant, dead_letter_id)
        ).fetchone()
    msg_id = row["msg_id"] if row else None
    output.result(
        f"dead letter {dead_letter_id}: requeued as message {msg_id}",
        {"dead_letter_id": dead_letter_id, "msg_id": msg_id, "outcome": "requeued"},
        as_json=as_json,
    )
