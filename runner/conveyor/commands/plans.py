"""`conveyor usage` and `conveyor tenants ...`: a tenant's usage against its plan, and its
plan (docs/plans.md)."""

from __future__ import annotations

from typing import Any

import click

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, tenant_option
from conveyor.db import connect


def _limit(quota: dict[str, Any]) -> str:
    limit = quota["limit"]
    if limit is None:
        return "unlimited"
    if quota["quota"] in ("conditional_branches", "parallel_execution") and limit == 0:
        return "not allowed"
    return str(limit)


@click.command()
@tenant_option
@database_option
@json_option
@fail_cleanly
def usage(tenant: str, database_url: str | None, as_json: bool) -> None:
    """The tenant's usage against its plan: every quota, this month's executions (the month
    of the tenant's time zone) and the limits."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.plan_usage(%s) as usage", (tenant,)).fetchone()
    report: dict[str, Any] = row["usage"] if row else {}
    if as_json:
        output.emit_json(report)
        return
    click.echo(
        f"tenant {report['tenant']}, plan {report['plan']}; month {report['period_start']}"
        f" until {report['period_end']} ({report['timezone']})"
    )
    output.table(
        [{"quota": q["quota"], "used": q["used"], "limit": _limit(q)} for q in report["quotas"]],
        ["quota", "used", "limit"],
    )


@click.group()
def tenants() -> None:
    """Tenants and their plans (docs/integrate.md, docs/plans.md)."""


@tenants.command("add")
@click.argument("tenant")
@click.option("--name", help="A display name (default: the tenant id).")
@click.option(
    "--timezone", default="UTC", show_default=True, help="An IANA time zone: months and schedules follow it."
)
@click.option("--plan", default="standard", show_default=True, help="The plan (`conveyor tenants plans`).")
@database_option
@json_option
@fail_cleanly
def add_tenant(
    tenant: str, name: str | None, timezone: str, plan: str, database_url: str | None, as_json: bool
) -> None:
    """Create TENANT: the id the platform's rows carry in their tenant column."""
    with connect(database_url) as conn:
        conn.execute(
            "select conveyor.create_tenant(%s, %s, %s, %s)", (tenant, name or tenant, timezone, plan)
        )
    output.result(
        f"tenant {tenant} created (plan {plan}, time zone {timezone})",
        {"tenant": tenant, "name": name or tenant, "timezone": timezone, "plan": plan},
        as_json=as_json,
    )


@tenants.command("list")
@database_option
@json_option
@fail_cleanly
def list_tenants(database_url: str | None, as_json: bool) -> None:
    """Every tenant with its plan, time zone and active workflows."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select t.tenant_id as tenant, t.name, t.plan, t.timezone,"
            " (select count(*) from conveyor.workflows as w where w.tenant_id = t.tenant_id and w.active)"
            " as active_workflows, t.created_at"
            " from conveyor.tenants as t order by t.tenant_id"
        ).fetchall()
    output.show(
        [dict(r) for r in rows],
        ["tenant", "name", "plan", "timezone", "active_workflows", "created_at"],
        as_json=as_json,
    )


@tenants.command("set-plan")
@click.argument("tenant")
@click.argument("plan")
@database_option
@json_option
@fail_cleanly
def set_plan(tenant: str, plan: str, database_url: str | None, as_json: bool) -> None:
    """Move TENANT to PLAN (free, pro, enterprise, standard or one of the platform's own)."""
    with connect(database_url) as conn:
        row = conn.execute("select conveyor.set_tenant_plan(%s, %s) as previous", (tenant, plan)).fetchone()
    previous = row["previous"] if row else None
    output.result(
        f"tenant {tenant}: plan {plan} (was {previous})",
        {"tenant": tenant, "plan": plan, "previous": previous},
        as_json=as_json,
    )


@tenants.command("plans")
@database_option
@json_option
@fail_cleanly
def list_plans(database_url: str | None, as_json: bool) -> None:
    """The plans: one column per plan, one row per quota ("unlimited" where it has none)."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select name as plan, workflows, executions_per_month, steps_per_workflow,"
            " case when longest_delay is not null then conveyor.duration_text(longest_delay) end as longest_delay,"
            " connections, history_days, webhook_endpoints, scheduled_workflows, conditional_branches,"
            " parallel_execution, (select count(*) from conveyor.tenants as t where t.plan = p.name) as tenants"
            " from conveyor.plans as p order by name"
        ).fetchall()
    if as_json:
        output.emit_json([dict(r) for r in rows])
        return
    names = [str(r["plan"]) for r in rows]
    quotas = [k for k in (rows[0].keys() if rows else []) if k != "plan"]
    output.table(
        [
            {"quota": q, **{str(r["plan"]): "unlimited" if r[q] is None else r[q] for r in rows}}
            for q in quotas
        ],
        ["quota", *names],
    )
