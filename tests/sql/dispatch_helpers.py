"""Events in, executions out, through the SQL API: tenants, published workflows, emitted
events and the reasons dispatch logged. The dispatch-side test modules share these."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def add_tenant(conn: Conn, tenant_id: str) -> str:
    """Tenant `tenant_id` (named in capitals), unless it exists already."""
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values (%s, %s) on conflict do nothing",
        (tenant_id, tenant_id.upper()),
    )
    return tenant_id


def publish(conn: Conn, tenant_id: str, slug: str, trigger: dict[str, Any], **extra: Any) -> int:
    document = {
        "slug": slug,
        "name": slug,
        "trigger": trigger,
        "steps": extra.pop("steps", [{"id": "note", "set": {"seen": "{{trigger.event_type}}"}}]),
        **extra,
    }
    row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))).fetchone()
    assert row is not None
    return int(row["workflow_id"])


def emit(
    conn: Conn, tenant_id: str, event_type: str, payload: dict[str, Any] | None = None, **kw: Any
) -> int:
    row = conn.execute(
        "select conveyor.emit(%s, %s, %s, p_entity_type => %s, p_entity_id => %s, p_source => %s) as id",
        (
            tenant_id,
            event_type,
            Jsonb(payload or {}),
            kw.get("entity_type"),
            kw.get("entity_id"),
            kw.get("source"),
        ),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def log_reasons(conn: Conn) -> list[str]:
    rows = conn.execute("select details ->> 'reason' as reason from conveyor.execution_logs order by log_id")
    return [r["reason"] for r in rows.fetchall() if r["reason"]]
