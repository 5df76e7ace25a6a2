"""conveyor.dry_run: every step's decision, nothing sent, nothing kept."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import Conn, dry_run

DOC: dict[str, Any] = {
    "slug": "deal-won",
    "name": "Deal won hand-off",
    "trigger": {"event": "crm.deal.won"},
    "steps": [
        {
            "id": "big",
            "if": {"field": "{{trigger.payload.amount}}", "op": "gte", "value": 1000},
            "then": "tell-sales",
            "else": "small",
        },
        {
            "id": "tell-sales",
            "action": "slack.send",
            "connection": "sales",
            "with": {"text": "Won {{trigger.payload.amount}} from {{trigger.payload.company}}"},
        },
        {"id": "pause", "delay": {"for": "1d"}},
        {
            "id": "log",
            "emit": {"event": "crm.deal.announced", "payload": {"amount": "{{trigger.payload.amount}}"}},
        },
        {"id": "done", "stop": {"reason": "announced"}},
        {"id": "small", "set": {"size": "small"}},
    ],
}

TABLES = [
    "conveyor.workflows",
    "conveyor.workflow_versions",
    "conveyor.workflow_steps",
    "conveyor.subscriptions",
    "conveyor.executions",
    "conveyor.step_runs",
    "conveyor.events",
    "conveyor.execution_logs",
    "conveyor.workflow_stats",
    "pgmq.q_conveyor_actions",
    "pgmq.a_conveyor_actions",
]


def counts(conn: Conn) -> dict[str, int]:
    result = {}
    for table in TABLES:
        schema, name = table.split(".")
        query = sql.SQL("select count(*) as n from {}").format(sql.Identifier(schema, name))
        row = conn.execute(query).fetchone()
        assert row is not None
        result[table] = int(row["n"])
    return result


def test_dry_run_returns_decisions_and_keeps_nothing(conn: Conn, tenant: str) -> None:
    before = counts(conn)
    result = dry_run(
        conn, DOC, {"event_type": "crm.deal.won", "payload": {"amount": 5000, "company": "Initech"}}
    )
    assert counts(conn) == before
    assert result["status"] == "completed"
    steps = result["steps"]
    assert [s["step"] for s in steps] == ["big", "tell-sales", "pause", "log", "done"]
    assert [s["decision"] for s in steps[:2]] == ["then", "would send slack.send"]
    assert steps[0]["next"] == "tell-sales"
    assert steps[1]["would_send"]["action"] == "slack.send"
    assert steps[1]["would_send"]["connection"] == "sales"
    assert steps[1]["would_send"]["input"] == {"text": "Won 5000 from Initech"}
    assert steps[1]["output"] is None
    assert steps[2]["decision"].startswith("would wait until ")
    assert steps[3]["input"]["payload"] == {"amount": 5000}
    assert steps[4]["decision"] == "stop: completed"


def test_dry_run_takes_the_other_branch_for_another_trigger(conn: Conn, tenant: str) -> None:
    result = dry_run(conn, DOC, {"payload": {"amount": 10, "company": "Tiny"}})
    assert [(s["step"], s["decision"]) for s in result["steps"]] == [("big", "else"), ("small", "ran")]
    assert result["vars"] == {"size": "small"}


def test_dry_run_reports_a_missing_template_field(conn: Conn, tenant: str) -> None:
    result = dry_run(conn, DOC, {"payload": {"amount": 5000}})
    assert result["status"] == "failed"
    assert result["steps"][1]["step"] == "tell-sales"
    assert result["steps"][1]["decision"].startswith("failed: ")
    assert "company" in result["error"]["message"]
    assert counts(conn)["conveyor.executions"] == 0


def test_dry_run_rejects_an_invalid_document_with_paths(conn: Conn, tenant: str) -> None:
    bad = DOC | {"steps": [*DOC["steps"][:-1], {"id": "small", "set": {"size": "{{trigr.x}}"}}]}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r'workflow "deal-won": \d+ problem'):
        dry_run(conn, bad, {})
    assert counts(conn)["conveyor.workflows"] == 0


def test_dry_run_of_a_published_workflow_leaves_it_unchanged(conn: Conn, tenant: str) -> None:
    conn.execute("select * from conveyor.publish('acme', %s)", (Jsonb(DOC),))
    before = conn.execute("select workflow_id, current_version from conveyor.workflows").fetchall()
    edited = DOC | {"name": "Edited"}
    dry_run(conn, edited, {"payload": {"amount": 1}})
    assert conn.execute("select workflow_id, current_version from conveyor.workflows").fetchall() == before
    assert conn.execute("select count(*) as n from conveyor.workflow_versions").fetchone() == {"n": 1}


def test_dry_run_trigger_defaults_to_the_documents_event_type(conn: Conn, tenant: str) -> None:
    doc = DOC | {
        "steps": [{"id": "what", "set": {"type": "{{trigger.event_type}}", "id": "{{trigger.event_id}}"}}]
    }
    result = dry_run(conn, doc, {"payload": {}})
    assert result["vars"] == {"type": "crm.deal.won", "id": None}
