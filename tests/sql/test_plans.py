"""Plans as data: the shipped tiers, a platform's own plans and edits, a tenant's plan and
its usage report, and that a tenant reaches neither another's plan nor its usage."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.plan_helpers import document, plan_tenant, publish, usage
from tests.sql.tenant_context import acting_for

Conn = psycopg.Connection[dict[str, Any]]

QUOTAS = [
    "workflows", "executions_per_month", "steps_per_workflow", "longest_delay", "connections", "history_days",
    "webhook_endpoints", "scheduled_workflows", "conditional_branches", "parallel_execution",
]  # fmt: skip


def plan(conn: Conn, name: str) -> dict[str, Any]:
    row = conn.execute(
        "select workflows, executions_per_month, steps_per_workflow,"
        " case when longest_delay is not null then conveyor.duration_text(longest_delay) end as longest_delay,"
        " connections, history_days, webhook_endpoints, scheduled_workflows, conditional_branches, parallel_execution"
        " from conveyor.plans where name = %s",
        (name,),
    ).fetchone()
    assert row is not None
    return dict(row)


def test_the_em57_tiers_are_shipped(conn: Conn) -> None:
    assert [plan(conn, name) for name in ("free", "pro", "enterprise")] == [
        {"workflows": 3, "executions_per_month": 100, "steps_per_workflow": 5, "longest_delay": "1 hour",
         "connections": 2, "history_days": 7, "webhook_endpoints": 1, "scheduled_workflows": 0,
         "conditional_branches": False, "parallel_execution": False},
        {"workflows": 25, "executions_per_month": 5000, "steps_per_workflow": 25, "longest_delay": "7 days",
         "connections": 10, "history_days": 30, "webhook_endpoints": 5, "scheduled_workflows": 5,
         "conditional_branches": True, "parallel_execution": False},
        {"workflows": None, "executions_per_month": 50000, "steps_per_workflow": None, "longest_delay": "30 days",
         "connections": None, "history_days": 90, "webhook_endpoints": None, "scheduled_workflows": None,
         "conditional_branches": True, "parallel_execution": True},
    ]  # fmt: skip


def test_a_tenant_created_without_a_plan_is_on_standard_which_limits_nothing(conn: Conn) -> None:
    conn.execute("select conveyor.create_tenant('acme', 'Acme')")
    assert conn.execute("select plan from conveyor.tenants").fetchone() == {"plan": "standard"}
    limits = plan(conn, "standard")
    assert [k for k, v in limits.items() if v not in (None, True)] == []


def test_create_tenant_refuses_an_unknown_plan(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="tenant 'acme': unknown plan 'gold' "):
        conn.execute("select conveyor.create_tenant('acme', 'Acme', 'UTC', 'gold')")
    assert conn.execute("select count(*) as n from conveyor.tenants").fetchone() == {"n": 0}


def test_a_platform_adds_a_plan_and_edits_it(conn: Conn) -> None:
    conn.execute(
        "select conveyor.set_plan('startup', %s)",
        (Jsonb({"workflows": 10, "longest_delay": "3d", "parallel_execution": False}),),
    )
    created = plan(conn, "startup")
    assert created == {
        "workflows": 10, "executions_per_month": None, "steps_per_workflow": None, "longest_delay": "3 days",
        "connections": None, "history_days": None, "webhook_endpoints": None, "scheduled_workflows": None,
        "conditional_branches": True, "parallel_execution": False,
    }  # fmt: skip
    conn.execute("select conveyor.set_plan('startup', %s)", (Jsonb({"workflows": None, "history_days": 14}),))
    assert plan(conn, "startup") == created | {"workflows": None, "history_days": 14}


def test_an_edit_of_a_shipped_plan_applies_to_its_tenants_at_once(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    conn.execute("select conveyor.set_plan('free', %s)", (Jsonb({"workflows": 1}),))
    publish(conn, t, document("one"))
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="the limit is 1"):
        publish(conn, t, document("two"))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"workflow": 3}, 'plan "startup": unknown quota "workflow" (expected one of: ' + ", ".join(QUOTAS) + ")"),
        ({"workflows": -1}, 'plan "startup": workflows: expected a whole number >= 0, or null for unlimited (got -1)'),
        ({"workflows": 2.5}, 'plan "startup": workflows: expected a whole number >= 0, or null for unlimited (got 2.5)'),
        ({"connections": "2"}, 'plan "startup": connections: expected a whole number >= 0, or null for unlimited (got "2")'),
        ({"history_days": 0}, 'plan "startup": history_days: expected a whole number of days > 0, or null for unlimited (got 0)'),
        ({"longest_delay": "soon"}, 'plan "startup": longest_delay: expected a duration such as "1h" or "7d", or null for unlimited (got "soon")'),
        ({"conditional_branches": None}, 'plan "startup": conditional_branches: expected true or false (got null)'),
    ],
)  # fmt: skip
def test_set_plan_names_the_bad_quota_and_stores_nothing(
    conn: Conn, limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("select conveyor.set_plan('startup', %s)", (Jsonb(limits),))
    assert caught.value.diag.message_primary == message
    assert conn.execute("select count(*) as n from conveyor.plans where name = 'startup'").fetchone() == {
        "n": 0
    }


def test_set_plan_refuses_a_bad_name(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid plan name 'Gold Plan'"):
        conn.execute("select conveyor.set_plan('Gold Plan', '{}')")


def test_set_tenant_plan_moves_a_tenant_and_refuses_an_unknown_plan(conn: Conn) -> None:
    plan_tenant(conn, "acme", "free")
    assert conn.execute("select conveyor.set_tenant_plan('acme', 'pro') as p").fetchone() == {"p": "free"}
    assert conn.execute("select plan from conveyor.tenants").fetchone() == {"plan": "pro"}
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("select conveyor.set_tenant_plan('acme', 'gold')")
    assert caught.value.diag.message_primary == (
        'tenant "acme": unknown plan "gold" (plans: enterprise, free, pro, standard)'
    )


def test_plan_usage_reports_every_quota_against_the_plan(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "pro", "Europe/Berlin")
    publish(conn, t, document("one", {"id": "w", "delay": {"for": "2d"}}, {"id": "s", "set": {"a": 1}}))
    publish(conn, t, document("cron", trigger={"schedule": {"cron": "0 9 * * *"}}))
    publish(conn, t, document("hook", trigger={"webhook": {"methods": ["POST"]}}))
    publish(
        conn, t,
        document("branch", {"id": "c", "if": {"field": "trigger.payload.x", "op": "is_null"}, "then": "s"},
                 {"id": "s", "set": {"a": 1}}),
    )  # fmt: skip
    conn.execute("insert into conveyor.connections (tenant_id, name, kind) values ('acme', 'smtp', 'smtp')")
    conn.execute("select conveyor.trigger_workflow('acme', 'one')")
    report = usage(conn, t)
    assert (report["tenant"], report["plan"], report["timezone"]) == ("acme", "pro", "Europe/Berlin")
    assert list(report["quotas"]) == QUOTAS
    assert {q: (v["used"], v["limit"]) for q, v in report["quotas"].items()} == {
        "workflows": (4, 25), "executions_per_month": (1, 5000), "steps_per_workflow": (2, 25),
        "longest_delay": ("2 days", "7 days"), "connections": (1, 10), "history_days": (30, 30),
        "webhook_endpoints": (1, 5), "scheduled_workflows": (1, 5), "conditional_branches": (1, None),
        "parallel_execution": (0, 0),
    }  # fmt: skip


def test_a_tenant_reads_its_own_usage_and_plan_through_the_application_role(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    with acting_for(app, acme):
        report = app.execute("select conveyor.plan_usage('acme') as u").fetchone()
        rows = app.execute("select tenant_id, executions from conveyor.tenant_usage").fetchall()
        tenants = app.execute("select tenant_id, plan from conveyor.tenants").fetchall()
    assert report is not None and report["u"]["plan"] == "standard"
    assert rows == [{"tenant_id": "acme", "executions": 7}]
    assert tenants == [{"tenant_id": "acme", "plan": "standard"}]


def test_a_tenant_cannot_read_another_tenants_usage(app: Conn, two_tenants: Conn, acme: str) -> None:
    denied = "tenant 'globex' is not this session's tenant"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=denied), acting_for(app, acme):
        app.execute("select conveyor.plan_usage('globex')")


def test_a_tenant_cannot_change_another_tenants_plan_or_usage(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    denied = "tenant 'globex' is not this session's tenant"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=denied), acting_for(app, acme):
        app.execute("select conveyor.set_tenant_plan('globex', 'free')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
        app.execute("update conveyor.tenant_usage set executions = 0")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, acme):
        app.execute("update conveyor.tenants set plan = 'enterprise'")
    with acting_for(app, acme):
        assert app.execute("select conveyor.set_tenant_plan('acme', 'pro') as p").fetchone() == {
            "p": "standard"
        }
    assert two_tenants.execute("select tenant_id, plan from conveyor.tenants order by 1").fetchall() == [
        {"tenant_id": "acme", "plan": "pro"},
        {"tenant_id": "globex", "plan": "standard"},
    ]
    assert two_tenants.execute("select sum(executions) as n from conveyor.tenant_usage").fetchone() == {
        "n": 14
    }


def test_without_a_tenant_the_application_role_moves_no_tenant(app: Conn, two_tenants: Conn) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("select conveyor.set_tenant_plan('acme', 'free')")
    assert two_tenants.execute("select plan from conveyor.tenants where tenant_id = 'acme'").fetchone() == {
        "plan": "standard"
    }


def test_the_application_role_edits_plans_only_outside_a_tenants_transaction(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, acting_for(app, acme):
        app.execute("select conveyor.set_plan('free', '{\"workflows\": 1000}')")
    assert caught.value.diag.message_primary == (
        'plan "free": conveyor.set_plan changes a plan for every tenant on it and is refused in a transaction'
        ' acting for tenant "acme"'
    )
    assert plan(two_tenants, "free")["workflows"] == 3
    app.execute("select conveyor.set_plan('startup', '{\"workflows\": 10}')")
    assert plan(two_tenants, "startup")["workflows"] == 10
