"""Driving executions without publish or dispatch: install a document's graph, start an
execution of it, read back what it did, and write an action's result back; also the
document-level dry run. The interpreter's test modules share these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def make_tenant(conn: Conn, tenant_id: str = "acme", timezone: str = "UTC") -> str:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name, timezone) values (%s, %s, %s)",
        (tenant_id, tenant_id.title(), timezone),
    )
    return tenant_id


def install(conn: Conn, tenant: str, doc: dict[str, Any], *, max_steps: int = 1000) -> tuple[int, int]:
    """Install `doc` as the next version of its workflow (compiled like publish does)."""
    row = conn.execute(
        "select workflow_id from conveyor.workflows where tenant_id = %s and slug = %s", (tenant, doc["slug"])
    ).fetchone()
    if row is None:
        row = conn.execute(
            "insert into conveyor.workflows (tenant_id, slug, name) values (%s, %s, %s) returning workflow_id",
            (tenant, doc["slug"], doc["slug"]),
        ).fetchone()
    assert row is not None
    workflow_id = int(row["workflow_id"])
    with conn.transaction():
        version_row = conn.execute(
            "select coalesce(max(version), 0) + 1 as v from conveyor.workflow_versions where workflow_id = %s",
            (workflow_id,),
        ).fetchone()
        assert version_row is not None
        version = int(version_row["v"])
        conn.execute(
            """insert into conveyor.workflow_versions
                 (workflow_id, version, tenant_id, definition, entry_step, max_steps)
               values (%s, %s, %s, %s, %s, %s)""",
            (workflow_id, version, tenant, Jsonb(doc), doc["steps"][0]["id"], max_steps),
        )
        conn.execute(
            """insert into conveyor.workflow_steps
                 (workflow_id, version, step_id, tenant_id, position, kind, action_type, config, next_step,
                  branches, on_error, error_step, retry_policy, timeout)
               select %(w)s, %(v)s, c.step_id, %(t)s, c.step_position, c.kind, c.action_type, c.config,
                      c.next_step, c.branches, c.on_error, c.error_step, c.retry_policy,
                      coalesce(conveyor.parse_duration(c.timeout_text), interval '30 seconds')
               from conveyor.compile_steps(%(doc)s) as c""",
            {"w": workflow_id, "v": version, "t": tenant, "doc": Jsonb(doc)},
        )
        conn.execute(
            "update conveyor.workflows set current_version = %s where workflow_id = %s",
            (version, workflow_id),
        )
    return workflow_id, version


def start(
    conn: Conn,
    tenant: str,
    workflow: tuple[int, int],
    trigger: dict[str, Any] | None = None,
    *,
    run: bool = True,
) -> int:
    """Create a pending execution at the version's entry step and (by default) run it."""
    trigger_object = {
        "event_id": None,
        "event_type": "crm.contact.created",
        "source": "crm",
        "entity_type": "contact",
        "entity_id": "c1",
        "payload": {},
        "changed_columns": None,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "depth": 0,
    } | (trigger or {})
    row = conn.execute(
        """insert into conveyor.executions (tenant_id, workflow_id, version, current_step, trigger, entity_id)
           select %s, v.workflow_id, v.version, v.entry_step, %s, %s
           from conveyor.workflow_versions as v where v.workflow_id = %s and v.version = %s
           returning execution_id""",
        (tenant, Jsonb(trigger_object), trigger_object["entity_id"], workflow[0], workflow[1]),
    ).fetchone()
    assert row is not None
    execution_id = int(row["execution_id"])
    if run:
        conn.execute("select conveyor.run_executions(array[%s]::bigint[])", (execution_id,))
    return execution_id


def execution(conn: Conn, execution_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select * from conveyor.executions where execution_id = %s", (execution_id,)
    ).fetchone()
    assert row is not None
    return row


def step_runs(conn: Conn, execution_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.step_runs where execution_id = %s order by step_run_id", (execution_id,)
    ).fetchall()


def visited(conn: Conn, execution_id: int) -> list[str]:
    return [r["step_id"] for r in step_runs(conn, execution_id)]


def queued_messages(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select msg_id, message, vt from pgmq.q_conveyor_actions order by msg_id").fetchall()


def now(conn: Conn) -> datetime:
    row = conn.execute("select now() as t").fetchone()
    assert row is not None
    value = row["t"]
    assert isinstance(value, datetime)
    return value


def delayed(conn: Conn, tenant: str, delay: dict[str, Any], slug: str = "d") -> tuple[int, int]:
    return install(
        conn,
        tenant,
        {
            "slug": slug,
            "steps": [{"id": "wait", "delay": delay}, {"id": "after", "set": {"done": "{{now}}"}}],
        },
    )


# A graph whose first step queues an action, and the write-back of its result.

WELCOME = {
    "id": "welcome",
    "action": "webhook.send",
    "connection": "hooks",
    "with": {
        "url": "https://example.test/{{trigger.entity_id}}",
        "body": {"amount": "{{trigger.payload.amount}}"},
    },
    "timeout": "20s",
}
AMOUNT = {"payload": {"amount": 1}}


def flow(conn: Conn, tenant: str, action: dict[str, Any] | None = None, slug: str = "wb") -> tuple[int, int]:
    return install(
        conn,
        tenant,
        {
            "slug": slug,
            "steps": [
                action or WELCOME,
                {"id": "after", "set": {"status": "{{steps.welcome.output.status}}"}},
            ],
        },
    )


def write_back(conn: Conn, *results: dict[str, Any]) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.write_back(%s)",
        (Jsonb(list(results)),),
    ).fetchall()


def archived(conn: Conn) -> list[int]:
    return [r["msg_id"] for r in conn.execute("select msg_id from pgmq.a_conveyor_actions order by msg_id")]


def dry_run(conn: Conn, doc: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(
        "select conveyor.dry_run('acme', %s, %s) as r", (Jsonb(doc), Jsonb(trigger))
    ).fetchone()
    assert row is not None
    result = row["r"]
    assert isinstance(result, dict)
    return result
