"""Approval steps for the tests: a document whose first step asks for approval and whose
routes record the outcome, starting one, and deciding / delegating / listing through the
SQL API (tests/sql/test_approvals*.py)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import execution, install, start

Conn = psycopg.Connection[dict[str, Any]]


def approval_doc(spec: dict[str, Any], slug: str = "expense") -> dict[str, Any]:
    """ask (the approval) → yes / no / late, each setting vars.result and ending."""
    return {
        "slug": slug,
        "name": "Expense approval",
        "trigger": {"event": "crm.contact.created"},
        "steps": [
            {
                "id": "ask",
                "approval": spec,
                "on_approved": "yes",
                "on_rejected": "no",
                "on_expired": "late",
            },
            {"id": "yes", "set": {"result": "approved"}, "next": None},
            {"id": "no", "set": {"result": "rejected"}, "next": None},
            {"id": "late", "set": {"result": "expired"}},
        ],
    }


def ask(conn: Conn, tenant: str, spec: dict[str, Any], trigger: dict[str, Any] | None = None) -> int:
    """Starts an execution of approval_doc(spec); it waits on its request."""
    return start(conn, tenant, install(conn, tenant, approval_doc(spec)), trigger)


def request_of(conn: Conn, execution_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select * from conveyor.approval_requests where execution_id = %s order by request_id desc limit 1",
        (execution_id,),
    ).fetchone()
    assert row is not None
    return row


def decide(
    conn: Conn, tenant: str, user: str, request_id: int, decision: str, note: str | None = None
) -> Any:
    row = conn.execute(
        "select conveyor.decide_approval(%s, %s, %s, %s, %s) as r", (tenant, user, request_id, decision, note)
    ).fetchone()
    assert row is not None
    return row["r"]


def delegate(
    conn: Conn, tenant: str, user: str, request_id: int, to_user: str, reason: str | None = None
) -> Any:
    row = conn.execute(
        "select conveyor.delegate_approval(%s, %s, %s, %s, %s) as r",
        (tenant, user, request_id, to_user, reason),
    ).fetchone()
    assert row is not None
    return row["r"]


def listed(conn: Conn, tenant: str, user: str, pending_only: bool = True) -> list[int]:
    rows = conn.execute(
        "select request_id from conveyor.list_approvals(%s, %s, %s)", (tenant, user, pending_only)
    ).fetchall()
    return [int(r["request_id"]) for r in rows]


def asked(conn: Conn, request_id: int) -> list[str]:
    """The users notified for the request, in order."""
    rows = conn.execute(
        "select user_id from conveyor.notifications where entity_type = 'approval_request' and entity_id = %s"
        " order by notification_id",
        (str(request_id),),
    ).fetchall()
    return [str(r["user_id"]) for r in rows]


def audit(conn: Conn, request_id: int) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "select user_id, decision, note, delegated_from, to_user from conveyor.approval_decisions"
        " where request_id = %s order by decision_id",
        (request_id,),
    ).fetchall()
    return [tuple(r.values()) for r in rows]


def result(conn: Conn, execution_id: int) -> tuple[str, Any]:
    """The execution's status and the outcome its route recorded."""
    state = execution(conn, execution_id)
    return state["status"], state["vars"].get("result")


def tick(conn: Conn, at: Any = None) -> Any:
    """One tick at `at` (default: the tick's own transaction time)."""
    row = conn.execute("select conveyor.tick(coalesce(%s, now())) as t", (at,)).fetchone()
    assert row is not None
    return row["t"]


def publish_problems(conn: Conn, spec: Any) -> list[str]:
    rows = conn.execute(
        "select m from conveyor.validate_workflow(%s) as m", (Jsonb(approval_doc(spec)),)
    ).fetchall()
    return [str(r["m"]) for r in rows]
