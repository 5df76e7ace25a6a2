"""Fan-out documents and readers shared by the fan-out test modules: publish a document
through conveyor.publish, start it by hand, read an execution's children and fan-outs."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.workflow_documents import publish

Conn = psycopg.Connection[dict[str, Any]]

TRIGGER = {"manual": True}


def doc(slug: str, *steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "name": slug, "trigger": TRIGGER, "steps": list(steps)} | extra


def hook(step_id: str, url: str = "https://example.test/x", **extra: Any) -> dict[str, Any]:
    """An action step: its message waits in the queue until a write-back answers it."""
    return {
        "id": step_id,
        "action": "webhook.send",
        "connection": "hooks",
        "with": {"url": url, "body": {}},
    } | extra


def run(conn: Conn, tenant: str, document: dict[str, Any], payload: dict[str, Any] | None = None) -> int:
    """Publish `document` and start one execution of it with `payload` as its trigger payload."""
    workflow_id, _ = publish(conn, tenant, document)
    row = conn.execute(
        "select conveyor.start_workflow(%s, %s, 'order', 'o1') as id",
        (workflow_id, Jsonb({"payload": payload or {}, "entity_type": "order", "entity_id": "o1"})),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def execution(conn: Conn, execution_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select * from conveyor.executions where execution_id = %s", (execution_id,)
    ).fetchone()
    assert row is not None
    return row


def children(conn: Conn, parent_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.executions where parent_execution_id = %s order by child_index", (parent_id,)
    ).fetchall()


def fanout(conn: Conn, parent_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select * from conveyor.fanouts where execution_id = %s order by fanout_id desc limit 1", (parent_id,)
    ).fetchone()
    assert row is not None
    return row


def pending_actions(conn: Conn, execution_ids: list[int]) -> list[dict[str, Any]]:
    """The queued step runs (actions waiting for a result) of these executions, oldest first."""
    return conn.execute(
        """select step_run_id, msg_id, execution_id from conveyor.step_runs
           where execution_id = any(%s) and status = 'queued' order by step_run_id""",
        (execution_ids,),
    ).fetchall()


def answer(conn: Conn, run: dict[str, Any], ok: bool = True, output: Any = None) -> None:
    """Write back one action's result (a failure is not retryable)."""
    result: dict[str, Any] = {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": ok}
    result |= (
        {"output": output if output is not None else {"status": 200}}
        if ok
        else {"error": "boom", "retryable": False}
    )
    conn.execute("select * from conveyor.write_back(%s)", (Jsonb([result]),))
