"""`conveyor executions ...` and `conveyor trigger`: what ran and why."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from psycopg.types.json import Jsonb

from conveyor import output
from conveyor.commands.common import (
    database_option,
    fail_cleanly,
    json_option,
    load_json_option,
    parse_since,
    read_document,
    tenant_option,
)
from conveyor.db import connect
from conveyor.errors import ConveyorError

STATUSES = ["pending", "running", "waiting", "completed", "failed", "cancelled", "timed_out"]


@click.group()
def executions() -> None:
    """Inspect and control executions."""


@executions.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only executions in this status.")
@click.option("--workflow", help="Only this workflow (slug).")
@click.option(
    "--since", default="24 hours", show_default=True, help="How far back, e.g. '2 hours', '7 days'."
)
@click.option("--limit", default=50, show_default=True)
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_executions(
    status: str | None,
    workflow: str | None,
    since: str,
    limit: int,
    tenant: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """List recent executions, newest first."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select * from conveyor.list_executions(%s, %s, %s, now() - %s::interval, %s)",
            (tenant, status, workflow, parse_since(since), limit),
        ).fetchall()
    output.show(
        rows,
        ["id", "workflow", "version", "status", "step", "entity_id", "created_at", "ms", "error"],
        as_json=as_json,
    )


@executions.command("show")
@click.argument("execution_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Print each step as it happens until the execution ends.")
@tenant_option
@database_option
@json_option
@fail_cleanly
def show_execution(
    execution_id: int, follow: bool, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """A timeline: every step with status, timings, rendered input and output, errors in full."""
    if follow:
        follow_execution(execution_id, tenant, database_url)
        return
    with connect(database_url) as conn:
        execution = conn.execute(
            "select * from conveyor.execution_detail(%s, %s)", (tenant, execution_id)
        ).fetchone()
        if execution is None:
            raise ConveyorError(f'execution {execution_id} does not exist for tenant "{tenant}"')
        steps = conn.execute(
            "select * from conveyor.execution_timeline(%s, %s)", (tenant, execution_id)
        ).fetchall()
        logs = conn.execute("select * from conveyor.execution_log(%s, %s)", (tenant, execution_id)).fetchall()
        # the branches, items and calls its fan-out steps started (sql/fanout.sql)
        children = conn.execute(
            "select * from conveyor.execution_children(%s, %s)", (tenant, execution_id)
        ).fetchall()
    if as_json:
        output.emit_json({"execution": execution, "steps": steps, "children": children, "logs": logs})
        return
    click.echo(
        f"execution {execution_id}: {execution['slug']} v{execution['version']}  {shown_status(execution)}"
        f"  created {execution['created_at']:%Y-%m-%d %H:%M:%S}"
    )
    if execution["paused_at"] is not None:
        click.echo(
            f"paused since {execution['paused_at']:%Y-%m-%d %H:%M:%S}:"
            f" `conveyor executions resume {execution_id}` lets it go on"
        )
    if execution["parent_execution_id"] is not None:
        click.echo(
            f"child {execution['child_index']} of execution {execution['parent_execution_id']}"
            + (f" ({json.dumps(execution['item'])})" if execution["item"] else "")
        )
    if execution["error"]:
        click.echo(f"error: {json.dumps(execution['error'])}")
    if execution["status"] == "waiting":
        click.echo(
            f"waiting for {execution['wait_kind']} at step {execution['current_step']}"
            + (f" until {execution['resume_at']}" if execution["resume_at"] else "")
        )
    output.table(
        steps,
        ["step", "visit", "attempt", "status", "started_at", "ms", "input", "output", "error"],
        title="steps",
    )
    if children:
        output.table(
            children,
            ["step", "label", "execution_id", "status", "current_step", "children", "error"],
            title="children (by fan-out step: branches, items, calls)",
        )
    if logs:
        output.table(logs, ["logged_at", "level", "message"], title="log")


def shown_status(execution: dict[str, Any]) -> str:
    """The status, or `paused (was waiting)` for a paused execution."""
    if execution["paused_at"] is not None and execution["status"] not in FINISHED:
        return f"paused (was {execution['status']})"
    return str(execution["status"])


FINISHED = ("completed", "failed", "cancelled", "timed_out")


def follow_execution(execution_id: int, tenant: str, database_url: str | None, every: float = 0.5) -> None:
    """Tail an execution: one line per step row as it appears or changes, then its end."""
    seen: dict[tuple[Any, Any, Any], Any] = {}
    last_status = None
    with connect(database_url) as conn:
        conn.autocommit = True  # each poll sees what the runners committed since
        while True:
            execution = conn.execute(
                "select * from conveyor.execution_detail(%s, %s)", (tenant, execution_id)
            ).fetchone()
            if execution is None:
                raise ConveyorError(f'execution {execution_id} does not exist for tenant "{tenant}"')
            for step in conn.execute(
                "select * from conveyor.execution_timeline(%s, %s)", (tenant, execution_id)
            ):
                key = (step["step"], step["visit"], step["attempt"])
                if seen.get(key) != step["status"]:
                    seen[key] = step["status"]
                    error = f"  {step['error']}" if step.get("error") else ""
                    click.echo(
                        f"step {step['step']} (visit {step['visit']}, attempt {step['attempt']}): {step['status']}{error}"
                    )
            status = shown_status(execution)
            if status != last_status:
                click.echo(f"execution {execution_id}: {status}")
                last_status = status
            if execution["status"] in FINISHED:
                if execution["status"] != "completed":
                    sys.exit(2)
                return
            time.sleep(every)


@executions.command("cancel")
@click.argument("execution_id", type=int)
@click.option("--reason", default=None, help="Why (kept with the execution).")
@tenant_option
@database_option
@json_option
@fail_cleanly
def cancel(
    execution_id: int, reason: str | None, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """Cancel an execution; a late result from a runner is then ignored."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.cancel_execution(%s, %s, %s) as done", (tenant, execution_id, reason)
        )
        done = row.fetchone()
    outcome = "cancelled" if done and done["done"] else "already finished"
    output.result(
        f"execution {execution_id}: {outcome}",
        {"execution_id": execution_id, "outcome": outcome},
        as_json=as_json,
    )


@executions.command("retry")
@click.argument("execution_id", type=int)
@click.option(
    "--from-start", is_flag=True, help="Start again from the first step (default: the failed step)."
)
@tenant_option
@database_option
@json_option
@fail_cleanly
def retry(execution_id: int, from_start: bool, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Retry a failed, timed-out or cancelled execution as a new one linked to it."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.retry_execution(%s, %s, %s) as id", (tenant, execution_id, from_start)
        ).fetchone()
        assert row is not None
        new = conn.execute(
            "select execution_id, status, current_step from conveyor.execution_detail(%s, %s)",
            (tenant, row["id"]),
        ).fetchone()
    assert new is not None
    if as_json:
        output.emit_json(
            {"execution_id": new["execution_id"], "retry_of": execution_id, "status": new["status"]}
        )
    else:
        click.echo(f"execution {new['execution_id']}: retry of {execution_id}, {new['status']}")


@executions.command("pause")
@click.argument("execution_id", type=int)
@tenant_option
@database_option
@json_option
@fail_cleanly
def pause(execution_id: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Pause an execution: it takes no further step until resumed."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.pause_execution(%s, %s) as done", (tenant, execution_id)
        ).fetchone()
    outcome = "paused" if row and row["done"] else "already paused"
    output.result(
        f"execution {execution_id}: {outcome}",
        {"execution_id": execution_id, "outcome": outcome},
        as_json=as_json,
    )


@executions.command("resume")
@click.argument("execution_id", type=int)
@tenant_option
@database_option
@json_option
@fail_cleanly
def resume(execution_id: int, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Resume a paused execution where it stopped."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.resume_execution(%s, %s) as done", (tenant, execution_id)
        ).fetchone()
        state = conn.execute(
            "select status from conveyor.execution_detail(%s, %s)", (tenant, execution_id)
        ).fetchone()
    resumed = row is not None and row["done"]
    click.echo(
        f"execution {execution_id}: {'resumed, ' + state['status'] if resumed and state else 'was not paused'}"
    )


@click.command("trigger")
@click.argument("slug")
@click.option("--data", "data", help='Input: inline JSON (\'{"plan": "pro"}\') or a JSON or YAML file.')
@click.option("--entity-id")
@tenant_option
@database_option
@json_option
@fail_cleanly
def trigger(
    slug: str,
    data: str | None,
    entity_id: str | None,
    tenant: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Start a workflow by hand with the given data ({{trigger.payload...}})."""
    payload = trigger_data(data)
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.trigger_workflow(%s, %s, %s, null, %s) as id",
            (tenant, slug, Jsonb(payload), entity_id),
        ).fetchone()
        assert row is not None
        status = conn.execute(
            "select status, error ->> 'message' as error from conveyor.execution_detail(%s, %s)",
            (tenant, row["id"]),
        ).fetchone()
    state = status["status"] if status else None
    if as_json:
        output.emit_json(
            {"execution_id": row["id"], "status": state, "error": status["error"] if status else None}
        )
    else:
        click.echo(f"execution {row['id']}: {state or '?'}")
    if state in ("failed", "timed_out", "cancelled"):
        # the run it started ended badly: say why and exit non-zero, for scripts and CI
        click.echo(f"error: execution {row['id']} {state}: {status['error'] if status else ''}", err=True)
        sys.exit(2)


def trigger_data(data: str | None) -> dict[str, Any]:
    """`--data`: inline JSON when it starts with { (after blanks), else a file's path."""
    if data is None:
        return {}
    if data.lstrip().startswith("{"):
        value = load_json_option(data, "--data")
        if not isinstance(value, dict):
            raise ConveyorError("--data must be a JSON object")
        return value
    path = Path(data)
    if not path.is_file():
        raise ConveyorError(f"--data {data!r}: no such file (inline data is a JSON object: '{{...}}')")
    return read_document(path)
