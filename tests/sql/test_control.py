"""Retrying finished executions: from the failed step or from the start, with lineage."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from conveyor.cli import main

Conn = psycopg.Connection[dict[str, Any]]

WORKFLOW = {
    "slug": "notify",
    "name": "Notify",
    "trigger": {"manual": True},
    "steps": [
        {"id": "prepare", "set": {"greeting": "hello {{trigger.payload.who}}"}},
        {"id": "call", "action": "webhook.send", "with": {"url": "http://127.0.0.1:9/hook", "body": {}}},
        {"id": "after", "set": {"done": True}},
    ],
}


@pytest.fixture
def failed(conn: Conn) -> int:
    """An execution whose webhook failed permanently."""
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('globex', 'Globex')"
    )
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(WORKFLOW),))
    row = conn.execute(
        "select conveyor.trigger_workflow('acme', 'notify', '{\"who\": \"Ada\"}') as id"
    ).fetchone()
    assert row is not None
    run = conn.execute(
        "select msg_id, step_run_id from conveyor.step_runs where status = 'queued'"
    ).fetchone()
    assert run is not None
    conn.execute(
        "select * from conveyor.write_back(%s)",
        (Jsonb([{**run, "ok": False, "retryable": False, "error": {"message": "HTTP 404"}}]),),
    )
    status = conn.execute(
        "select status from conveyor.executions where execution_id = %s", (row["id"],)
    ).fetchone()
    assert status == {"status": "failed"}
    return int(row["id"])


def test_retry_from_the_failed_step_keeps_earlier_work(conn: Conn, failed: int) -> None:
    row = conn.execute("select conveyor.retry_execution('acme', %s) as id", (failed,)).fetchone()
    assert row is not None
    new = conn.execute("select * from conveyor.executions where execution_id = %s", (row["id"],)).fetchone()
    assert new is not None
    assert new["retry_of"] == failed and new["status"] == "waiting" and new["current_step"] == "call"
    assert new["vars"] == {"greeting": "hello Ada"}
    steps = conn.execute(
        "select step_id from conveyor.step_runs where execution_id = %s", (row["id"],)
    ).fetchall()
    assert steps == [{"step_id": "call"}]  # "prepare" did not run again


def test_retry_from_the_start_runs_every_step(conn: Conn, failed: int) -> None:
    row = conn.execute("select conveyor.retry_execution('acme', %s, true) as id", (failed,)).fetchone()
    assert row is not None
    steps = conn.execute(
        "select step_id from conveyor.step_runs where execution_id = %s order by step_run_id", (row["id"],)
    ).fetchall()
    assert [s["step_id"] for s in steps] == ["prepare", "call"]
    logs = conn.execute(
        "select message from conveyor.execution_logs where execution_id = %s", (failed,)
    ).fetchall()
    assert any(f"retried as execution {row['id']} from the start" in log["message"] for log in logs)


def test_only_finished_unsuccessful_executions_can_be_retried(conn: Conn, failed: int) -> None:
    retry = conn.execute("select conveyor.retry_execution('acme', %s) as id", (failed,)).fetchone()
    assert retry is not None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is waiting; only failed"):
        conn.execute("select conveyor.retry_execution('acme', %s)", (retry["id"],))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='does not exist for tenant "globex"'):
        conn.execute("select conveyor.retry_execution('globex', %s)", (failed,))


def test_retry_command(db_url: str, failed: int) -> None:
    result = CliRunner().invoke(
        main,
        ["executions", "retry", str(failed), "--tenant", "acme", "--json"],
        env={"CONVEYOR_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    assert '"retry_of": ' + str(failed) in result.output
