"""The runner checks each message before it performs it (queue.Message.verdict): a body it
cannot use, or one read_actions marks, is written back as a dead letter, never performed.
Then the runner's loop and writer against a real database: read, dead-letter, write."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conveyor import queue as q
from conveyor.actions import Outcome
from conveyor.results import encode_results
from conveyor.runner import Runner, RunnerConfig
from conveyor.runner.shared import Finished as _Finished
from tests.sql.interpreter_helpers import execution, flow, make_tenant, start, step_runs

Conn = psycopg.Connection[dict[str, Any]]

GOOD = {
    "step_run_id": 7,
    "execution_id": 3,
    "tenant_id": "acme",
    "workflow_id": 1,
    "step_id": "hook",
    "action": "webhook.send",
    "connection": None,
    "input": {"url": "https://example.test/"},
    "idempotency_key": "3:hook:1",
    "attempt": 1,
    "timeout_s": 30,
}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([1, 2], "the message is an array, not a JSON object"),
        ("a string", "the message is a string, not a JSON object"),
        (None, "the message is null, not a JSON object"),
        ({"timeout_s": 1e300}, "step_run_id missing is not a step run id (a positive whole number)"),
        (GOOD | {"timeout_s": 1e300}, "timeout_s 1e+300 is not a number of seconds from 0 to 2147483647"),
        (GOOD | {"timeout_s": "soon"}, 'timeout_s "soon" is not a number of seconds from 0 to 2147483647'),
        (GOOD | {"step_run_id": "abc"}, 'step_run_id "abc" is not a step run id (a positive whole number)'),
        (
            GOOD | {"step_run_id": 2**63},
            "step_run_id 9223372036854775808 is not a step run id (a positive whole number)",
        ),
        (GOOD | {"step_run_id": True}, "step_run_id true is not a step run id (a positive whole number)"),
        (GOOD | {"action": ""}, 'action "" is not a non-empty string'),
        (GOOD | {"tenant_id": 5}, "tenant_id 5 is not a non-empty string"),
        (GOOD | {"attempt": 0}, "attempt 0 is not a positive whole number"),
        (GOOD | {"connection": ["x"]}, 'connection ["x"] is not a string'),
    ],
)
def test_a_body_the_runner_cannot_use_is_named_with_what_is_wrong(raw: Any, problem: str) -> None:
    message = q.Message(msg_id=1, read_ct=1, raw=raw)
    assert message.problem() == problem
    assert message.verdict() == (
        "malformed_message",
        f"malformed action message: {problem}; dead-lettered, not performed",
    )
    assert message.timeout_s <= q.MAX_TIMEOUT_S


def test_a_good_body_is_performed_unless_the_database_marked_it() -> None:
    assert q.Message(msg_id=1, read_ct=1, raw=GOOD).verdict() is None
    assert (
        q.Message(msg_id=1, read_ct=1, raw=GOOD | {"timeout_s": None, "connection": "hooks"}).verdict()
        is None
    )
    reason, error = q.Message(msg_id=1, read_ct=6, raw=GOOD, dead_letter="max_deliveries").verdict() or (
        "",
        "",
    )
    assert reason == "max_deliveries"
    assert error.startswith("the message was delivered 5 times without a result")
    reason, error = q.Message(msg_id=1, read_ct=2, raw=GOOD, dead_letter="step_run_gone").verdict() or (
        "",
        "",
    )
    assert (reason, error.split(" (")[0]) == ("step_run_gone", "step run 7 no longer waits for this message")


def send(conn: Conn, *messages: Any) -> list[int]:
    return [
        int(conn.execute("select pgmq.send('conveyor_actions', %s) as m", (Jsonb(m),)).fetchone()["m"])  # type: ignore[index]
        for m in messages
    ]


def runner_for(db_url: str) -> Runner:
    runner = Runner(RunnerConfig(db_url, visibility_margin=1.0))
    runner.features.write_back = True
    return runner


def test_malformed_messages_are_dead_lettered_not_performed(conn: Conn, db_url: str) -> None:
    bad = send(conn, [1, 2], "a string", {"timeout_s": 1e300}, {"step_run_id": "abc"})
    runner = runner_for(db_url)
    with psycopg.connect(db_url, autocommit=True) as runner_conn:
        runner.read_and_start(runner_conn)
        assert runner.state.leases == {}  # none of them is performed
        assert [f.message.msg_id for f in runner.state.finished if f.dead_letter] == bad
        runner.writer.flush(runner_conn)
    dead = conn.execute(
        "select msg_id, reason, last_error from conveyor.dead_letters order by msg_id"
    ).fetchall()
    assert [(d["msg_id"], d["reason"]) for d in dead] == [(m, "malformed_message") for m in bad]
    assert dead[0]["last_error"] == (
        "malformed action message: the message is an array, not a JSON object; dead-lettered, not performed"
    )
    assert conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0}


def test_a_malformed_message_naming_a_waiting_step_run_fails_that_step(conn: Conn, db_url: str) -> None:
    tenant = make_tenant(conn)
    eid = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 1}})
    [run] = step_runs(conn, eid)
    conn.execute(
        'update pgmq.q_conveyor_actions set message = message || \'{"timeout_s": "soon"}\' where msg_id = %s',
        (run["msg_id"],),
    )
    runner = runner_for(db_url)
    with psycopg.connect(db_url, autocommit=True) as runner_conn:
        runner.read_and_start(runner_conn)
        assert runner.state.leases == {}
        runner.writer.flush(runner_conn)
    e = execution(conn, eid)
    assert e["status"] == "failed"
    assert e["error"]["message"] == (
        'step "welcome" (webhook.send) failed after 1 attempt(s): malformed action message: timeout_s "soon"'
        " is not a number of seconds from 0 to 2147483647; dead-lettered, not performed"
    )
    [failed] = step_runs(conn, eid)
    assert (failed["status"], failed["error"]["dead_letter"]) == ("failed", "malformed_message")


def test_a_result_the_database_refuses_before_write_back_runs_is_written_as_a_dead_letter(
    conn: Conn, db_url: str
) -> None:
    """What the database refuses while reading the parameter (here: deeper than this
    database's stack allows) never reaches write_back's containment: the runner writes a
    dead letter instead, so the action is not performed again after the visibility timeout."""
    tenant = make_tenant(conn)
    eid = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 1}})
    [run] = step_runs(conn, eid)
    [row] = conn.execute("select * from conveyor.read_actions(1, 30, 30)").fetchall()
    message = q.Message(msg_id=row["msg_id"], read_ct=row["read_ct"], raw=row["message"])
    deep: Any = "x"
    for _ in range(800):
        deep = [deep]
    finished = _Finished(message, Outcome(ok=True, output={"body": deep}), 5)
    runner = runner_for(db_url)
    with psycopg.connect(db_url, autocommit=True) as runner_conn:
        runner_conn.execute("set max_stack_depth = '100kB'")
        with pytest.raises(psycopg.errors.StatementTooComplex):  # what the parameter meets
            runner_conn.execute("select %s::jsonb", (encode_results([{"output": deep}]),))
        runner.writer.write(runner_conn, [finished])
    [dead] = conn.execute("select * from conveyor.dead_letters").fetchall()
    assert (dead["reason"], dead["msg_id"], dead["step_run_id"]) == (
        "result_refused",
        run["msg_id"],
        run["step_run_id"],
    )
    assert dead["last_error"].startswith(
        "the database refused the action's result (54001: stack depth limit exceeded"
    )
    assert execution(conn, eid)["status"] == "failed"
    assert conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0}
