"""Retrying finished executions: from the failed step or from the start, with lineage."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from conveyor.cli import main
from tests.sql.workflow_documents import NOTIFY

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def failed(conn: Conn) -> int:
    """An execution whose webhook failed permanently."""
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('globex', 'Globex')"
    )
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(NOTIFY),))
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


SLOW = {
    "slug": "slow",
    "name": "Slow",
    "trigger": {"manual": True},
    "steps": [
        {"id": "wait", "delay": {"for": "1h"}},
        {"id": "call", "action": "webhook.send", "with": {"url": "http://127.0.0.1:9/hook", "body": {}}},
        {"id": "after", "set": {"done": True}},
    ],
}


def start_slow(conn: Conn) -> int:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme') on conflict do nothing"
    )
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(SLOW),))
    row = conn.execute("select conveyor.trigger_workflow('acme', 'slow') as id").fetchone()
    assert row is not None
    return int(row["id"])


def state(conn: Conn, execution_id: int) -> dict[str, Any]:
    row = conn.execute(
        "select status, current_step, paused_at is not null as paused from conveyor.executions"
        " where execution_id = %s",
        (execution_id,),
    ).fetchone()
    assert row is not None
    return row


def test_paused_delay_waits_for_resume_then_continues(conn: Conn) -> None:
    execution_id = start_slow(conn)
    assert conn.execute("select conveyor.pause_execution('acme', %s) as p", (execution_id,)).fetchone() == {
        "p": True
    }
    assert conn.execute("select conveyor.pause_execution('acme', %s) as p", (execution_id,)).fetchone() == {
        "p": False
    }
    # The delay ends while paused: nothing moves.
    conn.execute("select conveyor.resume_due(now() + interval '2 hours')")
    assert state(conn, execution_id) == {"status": "waiting", "current_step": "wait", "paused": True}
    assert conn.execute("select conveyor.resume_execution('acme', %s) as r", (execution_id,)).fetchone() == {
        "r": True
    }
    conn.execute("select conveyor.resume_due(now() + interval '2 hours')")
    assert state(conn, execution_id) == {"status": "waiting", "current_step": "call", "paused": False}


def test_action_result_of_a_paused_execution_is_kept_and_the_rest_waits(conn: Conn) -> None:
    execution_id = start_slow(conn)
    conn.execute("select conveyor.resume_due(now() + interval '2 hours')")
    run = conn.execute(
        "select msg_id, step_run_id from conveyor.step_runs where status = 'queued'"
    ).fetchone()
    assert run is not None
    conn.execute("select conveyor.pause_execution('acme', %s)", (execution_id,))
    applied = conn.execute(
        "select outcome from conveyor.write_back(%s)",
        (Jsonb([{**run, "ok": True, "output": {"status": 200}}]),),
    ).fetchall()
    assert applied == [{"outcome": "applied"}]
    assert state(conn, execution_id)["status"] in {"pending", "running"}
    assert conn.execute(
        "select count(*) as n from conveyor.step_runs where execution_id = %s and step_id = 'after'",
        (execution_id,),
    ).fetchone() == {"n": 0}
    conn.execute("select conveyor.resume_execution('acme', %s)", (execution_id,))
    assert state(conn, execution_id)["status"] == "completed"


def test_pause_refuses_finished_executions_and_resume_of_unpaused_is_a_no_op(conn: Conn, failed: int) -> None:
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="is failed; only pending, running or waiting"
    ):
        conn.execute("select conveyor.pause_execution('acme', %s)", (failed,))
    assert conn.execute("select conveyor.resume_execution('acme', %s) as r", (failed,)).fetchone() == {
        "r": False
    }


def test_pause_and_resume_commands(db_url: str, conn: Conn) -> None:
    execution_id = start_slow(conn)
    env = {"CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_TENANT": "acme"}
    paused = CliRunner().invoke(main, ["executions", "pause", str(execution_id)], env=env)
    assert paused.exit_code == 0 and "paused" in paused.output
    resumed = CliRunner().invoke(main, ["executions", "resume", str(execution_id)], env=env)
    assert resumed.exit_code == 0 and "resumed, waiting" in resumed.output
