"""`conveyor status` and `conveyor stats`: the installation and the workflows at a glance."""

from __future__ import annotations

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, parse_since, tenant_option
from conveyor.db import connect


@click.command("status")
@database_option
@json_option
@fail_cleanly
def status(database_url: str | None, as_json: bool) -> None:
    """The whole installation, every tenant: queue depth and age, executions in the last hour,
    next schedules, live runners (per tenant: `conveyor stats`, `conveyor usage`)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.system_status() as s").fetchone()
    assert row is not None
    state = row["s"]
    if as_json:
        output.emit_json({"scope": "installation", **state})
        return
    click.echo(
        "installation-wide, every tenant (per tenant: `conveyor stats --tenant T`, `conveyor usage --tenant T`)"
    )
    click.echo(
        f"queue: {state['queue_depth']} message(s), {state['queue_visible']} ready, "
        f"oldest {state['oldest_message_age_s'] or 0}s"
    )
    click.echo(f"events waiting for dispatch: {state['pending_events']}")
    last_hour = ", ".join(f"{k} {v}" for k, v in sorted(state["executions_last_hour"].items())) or "none"
    click.echo(f"executions in the last hour: {last_hour}; waiting now: {state['waiting']}")
    output.show(
        state["next_schedules"],
        ["tenant", "workflow", "cron", "timezone", "next_run_at"],
        as_json=False,
        title="next schedules",
    )
    output.show(
        state["runners"],
        ["runner_id", "hostname", "pid", "version", "last_seen_at"],
        as_json=False,
        title="live runners",
    )


@click.command("stats")
@click.option("--workflow", help="Only this workflow (slug).")
@click.option("--since", default="7 days", show_default=True, help="Period, e.g. '24 hours'.")
@tenant_option
@database_option
@json_option
@fail_cleanly
def stats(workflow: str | None, since: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Runs, success rate, average and p95 duration, top errors, slowest steps."""
    with connect(database_url) as conn:
        start = conn.execute("select now() - %s::interval as t", (parse_since(since),)).fetchone()
        assert start is not None
        summary = conn.execute(
            "select * from conveyor.workflow_summary(%s, %s, %s)", (tenant, workflow, start["t"])
        ).fetchall()
        errors = conn.execute("select * from conveyor.top_errors(%s, %s)", (tenant, start["t"])).fetchall()
        slow = conn.execute("select * from conveyor.slowest_steps(%s, %s)", (tenant, start["t"])).fetchall()
    if workflow:
        errors = [e for e in errors if e["slug"] == workflow]
        slow = [s for s in slow if s["slug"] == workflow]
    if as_json:
        output.emit_json({"workflows": summary, "top_errors": errors, "slowest_steps": slow})
        return
    output.show(
        summary,
        [
            "slug",
            "active",
            "runs",
            "completed",
            "failed",
            "success_rate",
            "avg_ms",
            "p95_ms",
            "last_run_at",
            "last_error",
        ],
        as_json=False,
        title=f"workflows, last {since}",
    )
    output.show(
        errors, ["slug", "step_id", "message", "occurrences", "last_seen"], as_json=False, title="top errors"
    )
    output.show(
        slow,
        ["slug", "step_id", "runs", "failures", "avg_ms", "p95_ms"],
        as_json=False,
        title="slowest steps",
    )
