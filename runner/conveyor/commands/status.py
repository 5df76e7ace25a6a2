"""`conveyor status` and `conveyor stats`: the installation and the workflows at a glance."""

from __future__ import annotations

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, parse_since, tenant_option
from conveyor.db import connect
from conveyor.durations import human


@click.command("status")
@click.option(
    "--tenant",
    "-t",
    default=None,
    help="Only this tenant's events, executions and schedules (default: the whole installation).",
)
@database_option
@json_option
@fail_cleanly
def status(tenant: str | None, database_url: str | None, as_json: bool) -> None:
    """Queue depth and age, executions in the last hour, next schedules, live runners:
    for every tenant together, or with --tenant for one (the queue and runners are shared)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.system_status() as s").fetchone()
        mine = (
            conn.execute("select conveyor.tenant_status(%s) as s", (tenant,)).fetchone()
            if tenant is not None
            else None
        )
    assert row is not None
    state = row["s"]
    if mine is not None:
        # the shared parts stay, named as shared; the rest is the tenant's
        shared = ("queue_depth", "queue_visible", "oldest_message_age_s", "runners")
        state = {**mine["s"], **{k: state[k] for k in shared}}
    if as_json:
        output.emit_json({"scope": tenant or "installation", **state})
        return
    click.echo(
        f"tenant {tenant}"
        if tenant
        else "installation-wide, every tenant (per tenant: `conveyor status --tenant T`, `conveyor stats --tenant T`)"
    )
    click.echo(
        f"action queue{' (shared by every tenant)' if tenant else ''}: {state['queue_depth']} message(s),"
        f" {state['queue_visible']} ready, oldest {human((state['oldest_message_age_s'] or 0) * 1000)}"
    )
    click.echo(f"events waiting for dispatch: {state['pending_events']}")
    last_hour = ", ".join(f"{k} {v}" for k, v in sorted(state["executions_last_hour"].items())) or "none"
    paused = f", paused {state['paused']}" if "paused" in state else ""
    click.echo(f"executions in the last hour: {last_hour}; waiting now: {state['waiting']}{paused}")
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
        title="live runners" + (" (shared)" if tenant else ""),
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
