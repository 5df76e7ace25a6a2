"""Maintenance: execution timeouts, the stalled-action safety net, retention, pg_cron jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

WEBHOOK_WORKFLOW = {
    "slug": "notify",
    "name": "Notify",
    "trigger": {"manual": True},
    "settings": {"timeout": "1h"},
    "steps": [
        {"id": "call", "action": "webhook.send", "with": {"url": "http://127.0.0.1:9/hook", "body": {}}}
    ],
}


def start(conn: Conn, document: dict[str, Any] = WEBHOOK_WORKFLOW) -> int:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme') on conflict do nothing"
    )
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
    row = conn.execute("select conveyor.trigger_workflow('acme', %s) as id", (document["slug"],)).fetchone()
    assert row is not None
    return int(row["id"])


def queue_depth(conn: Conn) -> int:
    row = conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone()
    assert row is not None
    return int(row["n"])


def test_execution_past_its_timeout_is_timed_out_and_its_action_withdrawn(conn: Conn) -> None:
    execution_id = start(conn)
    assert queue_depth(conn) == 1
    msg = conn.execute(
        "select msg_id, step_run_id from conveyor.step_runs where status = 'queued'"
    ).fetchone()
    assert msg is not None
    assert conn.execute("select conveyor.expire_timeouts(now() + interval '30 minutes') as n").fetchone() == {
        "n": 0
    }
    assert conn.execute("select conveyor.expire_timeouts(now() + interval '2 hours') as n").fetchone() == {
        "n": 1
    }
    row = conn.execute(
        "select status, error ->> 'message' as message from conveyor.executions where execution_id = %s",
        (execution_id,),
    ).fetchone()
    assert row is not None and row["status"] == "timed_out"
    assert 'at step "call"' in row["message"]
    assert queue_depth(conn) == 0
    assert conn.execute("select status from conveyor.step_runs").fetchall() == [{"status": "skipped"}]
    # A runner that was performing it when the timeout hit: its write-back changes nothing.
    late = conn.execute(
        "select outcome from conveyor.write_back(%s)",
        (Jsonb([{"msg_id": msg["msg_id"], "step_run_id": msg["step_run_id"], "ok": True, "output": {}}]),),
    ).fetchall()
    assert late == [{"outcome": "ignored"}]
    stats = conn.execute("select sum(timed_out) as n from conveyor.workflow_stats").fetchone()
    assert stats == {"n": 1}


def test_queued_action_without_message_is_sent_again(conn: Conn) -> None:
    start(conn)
    original = conn.execute("select step_run_id, msg_id, idempotency_key from conveyor.step_runs").fetchone()
    assert original is not None
    conn.execute("select pgmq.delete('conveyor_actions', %s::bigint)", (original["msg_id"],))
    # Too recent to count as stalled.
    assert conn.execute("select conveyor.recover_stalled_actions() as n").fetchone() == {"n": 0}
    conn.execute("update conveyor.step_runs set started_at = started_at - interval '5 minutes'")
    assert conn.execute("select conveyor.recover_stalled_actions() as n").fetchone() == {"n": 1}
    message = conn.execute("select message from pgmq.q_conveyor_actions").fetchone()
    assert message is not None
    assert message["message"]["idempotency_key"] == original["idempotency_key"]
    assert message["message"]["step_run_id"] == original["step_run_id"]
    assert conn.execute("select conveyor.recover_stalled_actions() as n").fetchone() == {"n": 0}


def test_every_stalled_action_of_a_round_is_sent_again_and_logged(conn: Conn) -> None:
    first, second = start(conn), start(conn)
    runs = conn.execute(
        "select step_run_id, msg_id, execution_id from conveyor.step_runs order by 1"
    ).fetchall()
    for run in runs:
        conn.execute("select pgmq.delete('conveyor_actions', %s::bigint)", (run["msg_id"],))
    conn.execute("update conveyor.step_runs set started_at = started_at - interval '5 minutes'")
    assert conn.execute("select conveyor.recover_stalled_actions() as n").fetchone() == {"n": 2}
    sent = conn.execute(
        "select (message ->> 'step_run_id')::bigint as step_run_id from pgmq.q_conveyor_actions order by 1"
    ).fetchall()
    assert [r["step_run_id"] for r in sent] == [r["step_run_id"] for r in runs]
    # each step run records its new message
    assert conn.execute(
        "select count(*) as n from conveyor.step_runs as r"
        " join pgmq.q_conveyor_actions as q on q.msg_id = r.msg_id"
    ).fetchone() == {"n": 2}
    logs = conn.execute(
        "select execution_id, message, details ->> 'reason' as reason from conveyor.execution_logs"
        " where details ->> 'reason' = 'requeued' order by execution_id"
    ).fetchall()
    assert logs == [
        {
            "execution_id": eid,
            "message": 'action of step "call" had no queue message; sent again',
            "reason": "requeued",
        }
        for eid in sorted((first, second))
    ]


def test_retention_prunes_old_history_in_batches(conn: Conn) -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name, retention_days) values ('acme', 'Acme', 7)")
    document = {
        "slug": "quick",
        "name": "Quick",
        "trigger": {"manual": True},
        "steps": [{"id": "s", "set": {"a": 1}}],
    }
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
    for _ in range(5):
        conn.execute("select conveyor.trigger_workflow('acme', 'quick')")
    ids = [r["execution_id"] for r in conn.execute("select execution_id from conveyor.executions order by 1")]
    conn.execute(
        "update conveyor.executions set created_at = now() - interval '10 days', started_at = now() - interval '10 days',"
        " finished_at = now() - interval '10 days' where execution_id = any(%s)",
        (ids[:3],),
    )
    first = conn.execute("select conveyor.prune_history(now(), 2) as r").fetchone()
    assert first is not None and first["r"]["executions"] == 2
    second = conn.execute("select conveyor.prune_history(now(), 2) as r").fetchone()
    assert second is not None and second["r"]["executions"] == 1
    remaining = [
        r["execution_id"] for r in conn.execute("select execution_id from conveyor.executions order by 1")
    ]
    assert remaining == ids[3:]
    orphans = conn.execute(
        "select count(*) as n from conveyor.step_runs where execution_id <> all(%s)", (remaining,)
    ).fetchone()
    assert orphans == {"n": 0}


def test_retention_follows_each_tenants_setting(conn: Conn) -> None:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name, retention_days) values ('short', 'S', 7), ('long', 'L', 90)"
    )
    conn.execute(
        "insert into conveyor.execution_logs (tenant_id, level, message, logged_at) values"
        " ('short', 'info', 'old', now() - interval '30 days'), ('long', 'info', 'old', now() - interval '30 days')"
    )
    later = conn.execute("select conveyor.prune_history(now() + %s) as r", (timedelta(seconds=1),)).fetchone()
    assert later is not None and later["r"]["logs"] == 1
    assert conn.execute("select tenant_id from conveyor.execution_logs").fetchall() == [{"tenant_id": "long"}]


def test_pg_cron_jobs_are_installed(cron_db_url: str) -> None:
    with psycopg.connect(cron_db_url, row_factory=dict_row) as c:
        jobs = {r["jobname"]: r["schedule"] for r in c.execute("select jobname, schedule from cron.job")}
    assert jobs["conveyor-tick"] == "* * * * *"
    assert jobs["conveyor-stalled"] == "* * * * *"
    assert jobs["conveyor-retention"] == "*/5 * * * *"
