"""Tenants on plans, documents that reach a quota, and the refusals quotas raise: shared by
test_plans.py and the test_quotas_*.py modules."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def plan_tenant(conn: Conn, tenant_id: str, plan: str, timezone: str = "UTC") -> str:
    conn.execute(
        "select conveyor.create_tenant(%s, %s, %s, %s)", (tenant_id, tenant_id.title(), timezone, plan)
    )
    return tenant_id


def document(slug: str, *steps: dict[str, Any], trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": slug,
        "trigger": trigger or {"event": "crm.contact.created"},
        "steps": list(steps) or [{"id": "note", "set": {"seen": "{{trigger.event_type}}"}}],
    }


def sets(n: int) -> list[dict[str, Any]]:
    """n set steps."""
    return [{"id": f"s{i}", "set": {"n": i}} for i in range(n)]


def publish(conn: Conn, tenant_id: str, doc: dict[str, Any]) -> int:
    row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant_id, Jsonb(doc))).fetchone()
    assert row is not None
    return int(row["version"])


def refused(conn: Conn, sql: str, *params: Any) -> str:
    """The quota refusal (54000) the statement raises; its message."""
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as caught:
        conn.execute(sql, params)
    return str(caught.value.diag.message_primary)


def refused_publish(conn: Conn, tenant_id: str, doc: dict[str, Any]) -> str:
    return refused(conn, "select * from conveyor.publish(%s, %s)", tenant_id, Jsonb(doc))


def snapshot(conn: Conn, tenant_id: str) -> dict[str, Any]:
    """What a refused change must leave as it was: the tenant's workflows, versions, steps,
    subscriptions, schedules, endpoints and connections."""
    row = conn.execute(
        """
        select
          (select jsonb_agg(w order by w.slug) from (
            select slug, active, current_version from conveyor.workflows where tenant_id = %(t)s) as w) as workflows,
          (select count(*) from conveyor.workflow_versions where tenant_id = %(t)s) as versions,
          (select count(*) from conveyor.workflow_steps where tenant_id = %(t)s) as steps,
          (select count(*) filter (where active) from conveyor.subscriptions where tenant_id = %(t)s) as subscriptions,
          (select count(*) from conveyor.schedules where tenant_id = %(t)s) as schedules,
          (select count(*) from conveyor.webhook_endpoints where tenant_id = %(t)s) as endpoints,
          (select count(*) from conveyor.connections where tenant_id = %(t)s) as connections
        """,
        {"t": tenant_id},
    ).fetchone()
    assert row is not None
    return dict(row)


def usage(conn: Conn, tenant_id: str, at: str | None = None) -> dict[str, Any]:
    """conveyor.plan_usage, its quotas by name."""
    row = conn.execute(
        "select conveyor.plan_usage(%s, coalesce(%s::timestamptz, now())) as u", (tenant_id, at)
    ).fetchone()
    assert row is not None
    report = dict(row["u"])
    report["quotas"] = {q["quota"]: q for q in report["quotas"]}
    return report
