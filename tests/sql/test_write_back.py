"""The action hand-off (step_run + pgmq message) and conveyor.write_back."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import (
    AMOUNT,
    WELCOME,
    Conn,
    archived,
    execution,
    flow,
    install,
    make_tenant,
    queued_messages,
    start,
    step_runs,
    visited,
    write_back,
)
from tests.sql.table_stats import table_counters
from tests.sql.tenant_context import acting_for, mint_token


def test_action_is_queued_with_rendered_input_and_a_stable_key(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 12}})
    e = execution(conn, eid)
    assert (e["status"], e["wait_kind"], e["current_step"]) == ("waiting", "action", "welcome")
    [run] = step_runs(conn, eid)
    assert run["status"] == "queued"
    assert run["input"] == {"url": "https://example.test/c1", "body": {"amount": 12}}
    assert run["idempotency_key"] == f"{eid}:welcome:1"
    [msg] = queued_messages(conn)
    assert msg["msg_id"] == run["msg_id"]
    assert msg["message"] == {
        "step_run_id": run["step_run_id"],
        "execution_id": eid,
        "tenant_id": tenant,
        "workflow_id": e["workflow_id"],
        "step_id": "welcome",
        "action": "webhook.send",
        "connection": "hooks",
        "input": run["input"],
        "idempotency_key": f"{eid}:welcome:1",
        "attempt": 1,
        "timeout_s": 20,
    }


def test_ok_write_back_completes_the_step_and_continues(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 1}})
    [run] = step_runs(conn, eid)
    result = write_back(
        conn,
        {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {"status": 202}},
    )
    assert result == [{"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "outcome": "applied"}]
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert e["vars"] == {"status": 202}
    assert e["step_outputs"]["welcome"] == {"output": {"status": 202}}
    assert visited(conn, eid) == ["welcome", "after"]
    assert queued_messages(conn) == []
    assert archived(conn) == [run["msg_id"]]


def test_duplicate_and_late_write_backs_are_ignored(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    first = {
        "msg_id": run["msg_id"],
        "step_run_id": run["step_run_id"],
        "ok": True,
        "output": {"status": 200},
    }
    assert write_back(conn, first)[0]["outcome"] == "applied"
    before = (execution(conn, eid), step_runs(conn, eid))
    duplicate = first | {"output": {"status": 999}}
    late_failure = {
        "msg_id": run["msg_id"],
        "step_run_id": run["step_run_id"],
        "ok": False,
        "retryable": True,
        "error": {"message": "timeout"},
    }
    assert [r["outcome"] for r in write_back(conn, duplicate)] == ["ignored"]
    assert [r["outcome"] for r in write_back(conn, late_failure)] == ["ignored"]
    assert (execution(conn, eid), step_runs(conn, eid)) == before
    assert before[1][0]["output"] == {"status": 200}
    assert queued_messages(conn) == []
    assert execution(conn, eid)["steps_run"] == 2


def test_the_same_result_twice_in_one_batch_applies_once(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    result = {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {"status": 1}}
    assert [r["outcome"] for r in write_back(conn, result, result)] == ["applied", "ignored"]
    assert visited(conn, eid) == ["welcome", "after"]


def test_retryable_failure_queues_the_next_attempt_with_the_same_key(conn: Conn, tenant: str) -> None:
    action = WELCOME | {
        "retry": {"attempts": 3, "backoff": "exponential", "initial": "10s", "max": "1h", "jitter": False}
    }
    eid = start(conn, tenant, flow(conn, tenant, action), AMOUNT)
    [first] = step_runs(conn, eid)
    [outcome] = write_back(
        conn,
        {
            "msg_id": first["msg_id"],
            "step_run_id": first["step_run_id"],
            "ok": False,
            "retryable": True,
            "error": {"message": "HTTP 503"},
            "output": {"status": 503},
        },
    )
    assert outcome["outcome"] == "applied"
    runs = step_runs(conn, eid)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "failed"), (2, "queued")]
    assert runs[0]["error"]["message"] == "HTTP 503"
    assert runs[0]["output"] == {"status": 503}
    assert runs[1]["idempotency_key"] == runs[0]["idempotency_key"] == f"{eid}:welcome:1"
    assert runs[1]["input"] == runs[0]["input"]
    [msg] = queued_messages(conn)
    assert msg["message"]["attempt"] == 2
    assert msg["message"]["step_run_id"] == runs[1]["step_run_id"]
    delay = conn.execute("select extract(epoch from %s - now()) as s", (msg["vt"],)).fetchone()
    assert delay is not None
    assert 9 <= float(delay["s"]) <= 10  # initial 10s * 2^0
    assert execution(conn, eid)["status"] == "waiting"

    # attempt 2 fails too: 20 s, unless the receiver's retry_after_s is larger
    write_back(
        conn,
        {
            "msg_id": msg["msg_id"],
            "step_run_id": runs[1]["step_run_id"],
            "ok": False,
            "retryable": True,
            "retry_after_s": 120,
            "error": {"message": "HTTP 429"},
        },
    )
    [msg3] = queued_messages(conn)
    delay3 = conn.execute("select extract(epoch from %s - now()) as s", (msg3["vt"],)).fetchone()
    assert delay3 is not None
    assert 119 <= float(delay3["s"]) <= 120
    assert msg3["message"]["attempt"] == 3


@pytest.mark.parametrize(
    ("policy", "attempt", "retry_after", "low", "high"),
    [
        ({"initial": "30s", "max": "1h"}, 1, None, 30, 30),
        ({"initial": "30s", "max": "1h"}, 4, None, 240, 240),
        ({"initial": "30s", "max": "100s"}, 4, None, 100, 100),
        ({"initial": "30s", "backoff": "fixed"}, 5, None, 30, 30),
        ({"initial": "30s"}, 1, 45, 45, 45),
        ({"initial": "100s", "jitter": True}, 1, None, 80, 120),
    ],
)
def test_retry_delay_is_computed_in_sql(
    conn: Conn, policy: dict[str, Any], attempt: int, retry_after: int | None, low: int, high: int
) -> None:
    for _ in range(20 if policy.get("jitter") else 1):
        row = conn.execute(
            "select conveyor.retry_delay_s(%s, %s, %s) as s", (Jsonb(policy), attempt, retry_after)
        ).fetchone()
        assert row is not None
        assert low <= row["s"] <= high


def test_permanent_failure_fails_the_execution_with_context(conn: Conn, tenant: str) -> None:
    action = WELCOME | {"retry": {"attempts": 5}}
    eid = start(conn, tenant, flow(conn, tenant, action), {"payload": {"amount": 3}})
    [run] = step_runs(conn, eid)
    write_back(
        conn,
        {
            "msg_id": run["msg_id"],
            "step_run_id": run["step_run_id"],
            "ok": False,
            "retryable": False,
            "error": {"message": "HTTP 404", "status": 404},
            "output": {"status": 404, "body": "no such hook"},
        },
    )
    e = execution(conn, eid)
    assert e["status"] == "failed"
    assert e["error"]["step"] == "welcome"
    assert "HTTP 404" in e["error"]["message"]
    assert e["error"]["input"] == run["input"]
    assert e["error"]["output"] == {"status": 404, "body": "no such hook"}
    [failed] = step_runs(conn, eid)
    assert failed["status"] == "failed"
    assert failed["error"]["status"] == 404
    assert failed["input"] == {"url": "https://example.test/c1", "body": {"amount": 3}}
    assert queued_messages(conn) == []
    assert archived(conn) == [run["msg_id"]]


def test_exhausted_retries_follow_on_error_continue(conn: Conn, tenant: str) -> None:
    action = WELCOME | {"on_error": "continue"}
    eid = start(conn, tenant, flow(conn, tenant, action), AMOUNT)
    [run] = step_runs(conn, eid)
    write_back(
        conn,
        {
            "msg_id": run["msg_id"],
            "step_run_id": run["step_run_id"],
            "ok": False,
            "retryable": True,
            "error": {"message": "boom"},
            "output": {"status": "gave up"},
        },
    )
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert e["vars"] == {"status": "gave up"}
    assert e["step_outputs"]["welcome"]["error"]["message"] == "boom"


def test_failure_can_goto_an_error_step(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "goto",
        "steps": [
            WELCOME | {"on_error": {"goto": "sorry"}},
            {"id": "fine", "set": {"ok": True}, "next": None},
            {"id": "sorry", "set": {"ok": False}},
        ],
    }
    eid = start(conn, tenant, install(conn, tenant, doc), AMOUNT)
    [run] = step_runs(conn, eid)
    write_back(
        conn,
        {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": False, "error": {"message": "x"}},
    )
    assert visited(conn, eid) == ["welcome", "sorry"]
    assert execution(conn, eid)["vars"] == {"ok": False}


def test_cancel_then_write_back_is_ignored(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    status = conn.execute(
        "select conveyor.cancel_execution(%s, %s, 'customer left') as s", (tenant, eid)
    ).fetchone()
    assert status == {"s": "cancelled"}
    assert queued_messages(conn) == []  # the runner will not pick it up any more
    [skipped] = step_runs(conn, eid)
    assert skipped["status"] == "skipped"
    assert skipped["error"] == {"message": "execution cancelled", "reason": "customer left"}
    result = write_back(
        conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {}}
    )
    assert [r["outcome"] for r in result] == ["ignored"]
    e = execution(conn, eid)
    assert e["status"] == "cancelled"
    assert visited(conn, eid) == ["welcome"]
    stats = conn.execute("select sum(cancelled) as c from conveyor.workflow_stats").fetchone()
    assert stats == {"c": 1}


def test_cancel_is_refused_for_another_tenant(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "other")
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    with pytest.raises(Exception, match="not found for tenant"):
        conn.execute("select conveyor.cancel_execution('other', %s)", (eid,))
    assert execution(conn, eid)["status"] == "waiting"


def test_a_write_back_for_an_unknown_step_run_is_ignored(conn: Conn, tenant: str) -> None:
    result = write_back(conn, {"msg_id": None, "step_run_id": 424242, "ok": True})
    assert result == [{"msg_id": None, "step_run_id": 424242, "outcome": "ignored"}]


def test_cancel_checks_the_sessions_tenant(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "other")
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    other, acme = mint_token(conn, "other"), mint_token(conn, "acme")
    conn.execute("set role conveyor_app")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(conn, other):
        conn.execute("select conveyor.cancel_execution('acme', %s)", (eid,))
    with acting_for(conn, acme):
        assert conn.execute("select conveyor.cancel_execution('acme', %s) as s", (eid,)).fetchone() == {
            "s": "cancelled"
        }
    conn.execute("reset role")
    assert execution(conn, eid)["status"] == "cancelled"


def test_a_timed_out_execution_ignores_its_late_action_result(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    aborted = conn.execute(
        """select conveyor.abort_execution(%s, 'timed_out', '{"message": "timed out after 7 days"}') as ok""",
        (eid,),
    ).fetchone()
    assert aborted == {"ok": True}
    result = write_back(
        conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {}}
    )
    assert [r["outcome"] for r in result] == ["ignored"]
    e = execution(conn, eid)
    assert (e["status"], e["error"]["message"]) == ("timed_out", "timed out after 7 days")
    assert step_runs(conn, eid)[0]["status"] == "skipped"
    stats = conn.execute("select sum(timed_out) as t from conveyor.workflow_stats").fetchone()
    assert stats == {"t": 1}


def test_actions_of_several_executions_are_sent_in_one_batch(conn: Conn, tenant: str) -> None:
    wf = flow(conn, tenant)
    ids = [start(conn, tenant, wf, {"payload": {"amount": n}}, run=False) for n in range(3)]
    conn.execute("select conveyor.run_executions(%s)", (ids,))
    messages = queued_messages(conn)
    assert len(messages) == 3
    for eid, n in zip(ids, range(3), strict=True):
        [run] = step_runs(conn, eid)
        [msg] = [m for m in messages if m["msg_id"] == run["msg_id"]]
        assert msg["message"]["step_run_id"] == run["step_run_id"]
        assert msg["message"]["input"]["body"] == {"amount": n}


def test_an_action_after_a_delay_is_sent_when_the_delay_resumes(conn: Conn, tenant: str) -> None:
    doc = {"slug": "later", "steps": [{"id": "pause", "delay": {"for": "1h"}}, WELCOME]}
    eid = start(conn, tenant, install(conn, tenant, doc), AMOUNT)
    assert queued_messages(conn) == []
    resume_at = execution(conn, eid)["resume_at"]
    assert conn.execute("select conveyor.resume_due(%s) as n", (resume_at,)).fetchone() == {"n": 1}
    [msg] = queued_messages(conn)
    assert msg["message"]["step_id"] == "welcome"
    assert step_runs(conn, eid)[-1]["msg_id"] == msg["msg_id"]


def test_concurrent_duplicate_write_backs_apply_once(conn: Conn, db_url: str, tenant: str) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    result = Jsonb(
        [{"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {"status": 1}}]
    )
    outcomes: list[str] = []

    def second_runner() -> None:
        with psycopg.connect(db_url, autocommit=True) as other:
            row = other.execute("select outcome from conveyor.write_back(%s)", (result,)).fetchone()
            assert row is not None
            outcomes.append(str(row[0]))

    with psycopg.connect(db_url) as first:  # one open transaction, holding the locks
        row = first.execute("select outcome from conveyor.write_back(%s)", (result,)).fetchone()
        assert row is not None
        outcomes.append(str(row[0]))
        thread = threading.Thread(target=second_runner)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()  # the second write-back waits for the first one's lock
        first.commit()
    thread.join(timeout=10)
    assert outcomes == ["applied", "ignored"]
    assert visited(conn, eid) == ["welcome", "after"]
    assert execution(conn, eid)["vars"] == {"status": 1}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.integers(min_value=1, max_value=600),
    cap=st.integers(min_value=1, max_value=7200),
    attempt=st.integers(min_value=1, max_value=12),
    retry_after=st.none() | st.integers(min_value=0, max_value=9000),
    fixed=st.booleans(),
)
def test_retry_delay_matches_a_reference(
    conn: Conn, initial: int, cap: int, attempt: int, retry_after: int | None, fixed: bool
) -> None:
    policy = {"initial": f"{initial}s", "max": f"{cap}s", "backoff": "fixed" if fixed else "exponential"}
    base = initial if fixed else initial * 2 ** (attempt - 1)
    expected = max(min(base, cap), retry_after or 0)
    row = conn.execute(
        "select conveyor.retry_delay_s(%s, %s, %s) as s", (Jsonb(policy), attempt, retry_after)
    ).fetchone()
    assert row == {"s": expected}


def test_dry_run_mode_does_not_leak_into_the_callers_transaction(
    conn: Conn, db_url: str, tenant: str
) -> None:
    doc = {"slug": "leak", "name": "Leak", "trigger": {"event": "crm.contact.created"}, "steps": [WELCOME]}
    with psycopg.connect(db_url) as tx:
        tx.execute("select conveyor.dry_run('acme', %s, %s)", (Jsonb(doc), Jsonb(AMOUNT)))
        row = tx.execute("select current_setting('conveyor.dry_run', true) as s").fetchone()
        assert row is not None
        assert row[0] in (None, "", "off")
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    assert execution(conn, eid)["wait_kind"] == "action"
    assert len(queued_messages(conn)) == 1


def test_a_read_gives_each_message_the_visibility_of_its_own_timeout(conn: Conn) -> None:
    conn.execute(
        "select pgmq.send('conveyor_actions', m)"
        ' from unnest(array[\'{"timeout_s": 5}\', \'{"timeout_s": 120}\', \'{"timeout_s": "x"}\']::jsonb[]) as m'
    )
    read = {
        r["msg_id"]: r["read_ct"]
        for r in conn.execute("select msg_id, read_ct from conveyor.read_actions(10, 2, 30)").fetchall()
    }
    vt = conn.execute(
        "select msg_id, message ->> 'timeout_s' as timeout_s,"
        " round(extract(epoch from vt - clock_timestamp())) as invisible_s"
        " from pgmq.q_conveyor_actions order by msg_id"
    ).fetchall()
    rows = [{**r, "read_ct": read[r["msg_id"]]} for r in vt]
    # its own timeout (or the default for a non-number) plus the margin, each
    assert [(r["timeout_s"], r["invisible_s"], r["read_ct"]) for r in rows] == [
        ("5", 7, 1),
        ("120", 122, 1),
        ("x", 32, 1),
    ]
    assert conn.execute("select count(*) as n from conveyor.read_actions(10, 2, 30)").fetchone() == {"n": 0}


def test_an_action_step_run_is_written_once_and_updated_in_place(conn: Conn, tenant: str) -> None:
    # Queued together with its message (msg_id at insert), then its result: a change to
    # columns no index covers, on a page with room (migration 0017), so a heap-only update
    # without a new entry in every index of step_runs.
    wf = install(
        conn,
        tenant,
        {
            "slug": "in-place",
            "steps": [
                {"id": "prepare", "set": {"amount": "{{trigger.payload.amount}}"}},
                WELCOME,
                {"id": "after", "set": {"status": "{{steps.welcome.output.status}}"}},
            ],
        },
    )
    ids = [start(conn, tenant, wf, {"payload": {"amount": n}}, run=False) for n in range(100)]
    conn.execute("select conveyor.run_executions(%s)", (ids,))
    messages = queued_messages(conn)
    for batch in range(0, 100, 20):  # as a runner writes back: a batch per transaction
        write_back(
            conn,
            *(
                {
                    "msg_id": m["msg_id"],
                    "step_run_id": m["message"]["step_run_id"],
                    "ok": True,
                    "output": {"status": 200},
                }
                for m in messages[batch : batch + 20]
            ),
        )
    counters = table_counters(conn, "conveyor.step_runs")
    assert (counters["inserted"], counters["updated"], counters["hot"]) == (300, 100, 100)


def test_a_loop_through_an_action_numbers_each_round_of_its_steps(conn: Conn, tenant: str) -> None:
    """Each write-back resumes the execution at a step it ran before: its visit counts on
    from the earlier rounds (read for the batch's executions at once)."""
    wf = install(
        conn,
        tenant,
        {
            "slug": "rounds",
            "steps": [
                {**WELCOME, "next": "tally"},
                {"id": "tally", "set": {"round": "{{steps.welcome.output.round}}"}},
                {
                    "id": "done?",
                    "if": {"field": "vars.round", "op": "gte", "value": 3},
                    "then": None,
                    "else": "welcome",
                },
            ],
        },
    )
    eid = start(conn, tenant, wf, AMOUNT)
    for round_ in (1, 2, 3):
        run = next(r for r in step_runs(conn, eid) if r["status"] == "queued")
        write_back(
            conn,
            {
                "msg_id": run["msg_id"],
                "step_run_id": run["step_run_id"],
                "ok": True,
                "output": {"round": round_},
            },
        )
    assert execution(conn, eid)["status"] == "completed"
    visits = sorted((r["step_id"], r["visit"]) for r in step_runs(conn, eid))
    assert visits == sorted((step, visit) for step in ("welcome", "tally", "done?") for visit in (1, 2, 3))
