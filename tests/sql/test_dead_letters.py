"""Dead letters (sql/dead_letters.sql, sql/write_back.sql, docs/queue.md): what the database
refuses is contained to one result, a message that can never complete stops being
redelivered and is kept with its last error, and an operator can requeue it. And the
queue's numbers are clamped: no value a message or a stored version holds overflows."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
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
    write_back,
)
from tests.sql.tenant_context import acting_for, mint_token

RETRYING = WELCOME | {"retry": {"attempts": 5, "backoff": "fixed", "initial": "10s"}}


def then_done(conn: Conn, tenant: str, action: dict[str, Any]) -> tuple[int, int]:
    """The action, then a step that needs nothing of its output."""
    return install(
        conn, tenant, {"slug": "then-done", "steps": [action, {"id": "after", "set": {"done": True}}]}
    )


def ok(run: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "msg_id": run["msg_id"],
        "step_run_id": run["step_run_id"],
        "ok": True,
        "output": {"status": 200},
    } | extra


def dead_letters(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.dead_letters order by dead_letter_id").fetchall()


def queued_run(conn: Conn, eid: int) -> dict[str, Any]:
    return next(r for r in step_runs(conn, eid) if r["status"] == "queued")


# --- containment: one refused result, the others applied ----------------------------------


@pytest.mark.parametrize(
    ("bad", "sqlstate"),
    [
        ({"ok": "maybe"}, "22P02"),  # not a boolean
        ({"ok": False, "retryable": True, "retry_after_s": "soon"}, "22P02"),
        ({"ok": False, "retryable": "perhaps"}, "22P02"),
    ],
)
def test_a_result_the_database_refuses_fails_its_step_and_the_rest_of_the_batch_applies(
    conn: Conn, tenant: str, bad: dict[str, Any], sqlstate: str
) -> None:
    wf = flow(conn, tenant, RETRYING)
    ids = [start(conn, tenant, wf, {"payload": {"amount": n}}) for n in range(3)]
    runs = [step_runs(conn, eid)[0] for eid in ids]
    outcomes = write_back(conn, ok(runs[0]), ok(runs[1]) | bad, ok(runs[2]))
    assert [r["outcome"] for r in outcomes] == ["applied", "dead_lettered", "applied"]
    assert [execution(conn, eid)["status"] for eid in ids] == ["completed", "failed", "completed"]
    refused = execution(conn, ids[1])["error"]["message"]
    assert refused.startswith(
        f'step "welcome" (webhook.send) failed after 1 attempt(s): the database refused the action\'s result'
        f" (SQLSTATE {sqlstate}: invalid input syntax for type"
    )
    [failed] = step_runs(conn, ids[1])  # no retry, whatever the policy says
    assert (failed["status"], failed["error"]["dead_letter"], failed["error"]["retryable"]) == (
        "failed",
        "result_refused",
        False,
    )
    [dead] = dead_letters(conn)
    assert (dead["tenant_id"], dead["execution_id"], dead["step_id"], dead["step_run_id"]) == (
        tenant,
        ids[1],
        "welcome",
        runs[1]["step_run_id"],
    )
    assert (dead["reason"], dead["attempts"], dead["msg_id"]) == ("result_refused", 0, runs[1]["msg_id"])
    assert dead["message"]["step_run_id"] == runs[1]["step_run_id"]
    assert dead["last_error"].startswith(f"the database refused the action's result (SQLSTATE {sqlstate}")
    assert sorted(archived(conn)) == sorted(r["msg_id"] for r in runs)
    assert queued_messages(conn) == []


def test_a_result_naming_no_valid_step_run_is_kept_for_the_step_its_message_names(
    conn: Conn, tenant: str
) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    [outcome] = write_back(conn, ok(run, step_run_id="abc"))
    assert outcome == {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "outcome": "dead_lettered"}
    assert execution(conn, eid)["status"] == "failed"
    assert [d["reason"] for d in dead_letters(conn)] == ["result_refused"]


def test_a_transient_error_is_raised_for_the_runner_to_retry_not_dead_lettered(
    conn: Conn, db_url: str, tenant: str
) -> None:
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    with psycopg.connect(db_url) as other:  # another transaction holds the execution
        other.execute("select 1 from conveyor.executions where execution_id = %s for update", (eid,))
        conn.execute("set lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            write_back(conn, ok(run))
        conn.execute("reset lock_timeout")
    assert dead_letters(conn) == []
    assert step_runs(conn, eid)[0]["status"] == "queued"
    assert [m["msg_id"] for m in queued_messages(conn)] == [run["msg_id"]]
    assert write_back(conn, ok(run))[0]["outcome"] == "applied"  # and the retry applies it


def test_a_batch_with_several_refused_results_applies_every_other_one(conn: Conn, tenant: str) -> None:
    wf = flow(conn, tenant)
    ids = [start(conn, tenant, wf, {"payload": {"amount": n}}) for n in range(8)]
    runs = [step_runs(conn, eid)[0] for eid in ids]
    results = [ok(r) | ({"ok": "?"} if n in (2, 5) else {}) for n, r in enumerate(runs)]
    outcomes = {r["step_run_id"]: r["outcome"] for r in write_back(conn, *results)}
    assert [outcomes[r["step_run_id"]] for r in runs] == [
        "dead_lettered" if n in (2, 5) else "applied" for n in range(8)
    ]
    assert len(dead_letters(conn)) == 2


# --- dead letters the runner writes: the step fails, the message is kept -------------------


@pytest.mark.parametrize(
    ("on_error", "status"), [(None, "failed"), ("continue", "completed")], ids=["fail", "continue"]
)
def test_a_dead_letter_fails_its_step_without_a_retry_and_keeps_the_message(
    conn: Conn, tenant: str, on_error: str | None, status: str
) -> None:
    action = RETRYING | ({"on_error": on_error} if on_error else {})
    eid = start(conn, tenant, then_done(conn, tenant, action), AMOUNT)
    [run] = step_runs(conn, eid)
    conn.execute("update pgmq.q_conveyor_actions set read_ct = 6 where msg_id = %s", (run["msg_id"],))
    error = "the message was delivered 5 times without a result"
    [outcome] = write_back(
        conn,
        {
            "msg_id": run["msg_id"],
            "step_run_id": run["step_run_id"],
            "ok": False,
            "retryable": True,  # a dead letter is never retried
            "dead_letter": "max_deliveries",
            "error": {"message": error, "type": "max_deliveries"},
        },
    )
    assert outcome["outcome"] == "dead_lettered"
    assert execution(conn, eid)["status"] == status
    [failed, *_] = step_runs(conn, eid)
    assert failed["status"] == "failed" and failed["error"]["message"] == error
    assert [r["attempt"] for r in step_runs(conn, eid) if r["step_id"] == "welcome"] == [1]
    [dead] = dead_letters(conn)
    assert (dead["reason"], dead["last_error"], dead["attempts"]) == ("max_deliveries", error, 6)
    assert dead["enqueued_at"] is not None and dead["dead_at"] >= dead["enqueued_at"]
    assert archived(conn) == [run["msg_id"]]


def test_a_result_for_a_step_run_that_does_not_exist_is_kept_as_a_dead_letter(
    conn: Conn, tenant: str
) -> None:
    message = {"step_run_id": 424242, "tenant_id": tenant, "action": "webhook.send"}
    row = conn.execute("select pgmq.send('conveyor_actions', %s) as m", (Jsonb(message),)).fetchone()
    assert row is not None
    [outcome] = write_back(conn, {"msg_id": row["m"], "step_run_id": 424242, "ok": True, "output": {}})
    assert outcome["outcome"] == "dead_lettered"
    [dead] = dead_letters(conn)
    assert (dead["reason"], dead["tenant_id"], dead["step_run_id"]) == ("step_run_gone", tenant, None)
    assert dead["last_error"].startswith("step run 424242 does not exist")
    # a late result for a step run that does exist is still only ignored
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    write_back(conn, ok(run))
    assert write_back(conn, ok(run))[0]["outcome"] == "ignored"
    assert len(dead_letters(conn)) == 1


# --- read_actions' verdict ---------------------------------------------------------------


def read(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute("select * from conveyor.read_actions(10, 30, 30)").fetchall()
    conn.execute("update pgmq.q_conveyor_actions set vt = now() - interval '1 second'")  # visible again
    return rows


def test_a_message_delivered_more_than_the_limit_is_marked_max_deliveries(conn: Conn, tenant: str) -> None:
    start(conn, tenant, flow(conn, tenant), AMOUNT)
    verdicts = [read(conn)[0]["dead_letter"] for _ in range(6)]
    assert verdicts == [None] * 5 + ["max_deliveries"]  # the default: 5
    conn.execute("set conveyor.max_action_deliveries = 7")
    assert read(conn)[0]["dead_letter"] is None  # delivery 7
    assert read(conn)[0]["dead_letter"] == "max_deliveries"
    conn.execute("set conveyor.max_action_deliveries = 'many'")
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match=r"setting conveyor\.max_action_deliveries"
    ):
        read(conn)
    conn.execute("reset conveyor.max_action_deliveries")


def test_a_redelivered_message_whose_step_run_no_longer_waits_for_it_is_marked(
    conn: Conn, tenant: str
) -> None:
    wf = flow(conn, tenant)
    gone, finished, fine = (start(conn, tenant, wf, {"payload": {"amount": n}}) for n in range(3))
    assert [r["dead_letter"] for r in read(conn)] == [None, None, None]  # first deliveries are not probed
    conn.execute("delete from conveyor.executions where execution_id = %s", (gone,))
    conn.execute("delete from conveyor.step_runs where execution_id = %s", (gone,))
    conn.execute(
        "update conveyor.step_runs set status = 'skipped', finished_at = now() where execution_id = %s",
        (finished,),
    )
    verdicts = {r["message"]["execution_id"]: r["dead_letter"] for r in read(conn)}
    assert verdicts == {gone: "step_run_gone", finished: "step_run_gone", fine: None}


def test_a_huge_timeout_neither_blocks_the_queue_nor_overflows(conn: Conn, tenant: str) -> None:
    conn.execute("select pgmq.send('conveyor_actions', '{\"timeout_s\": 1e300}')")
    start(conn, tenant, flow(conn, tenant), AMOUNT)
    assert len(conn.execute("select * from conveyor.read_actions(10, 1e300, 30)").fetchall()) == 2
    rows = conn.execute(
        "select round(extract(epoch from vt - clock_timestamp())) as invisible_s"
        " from pgmq.q_conveyor_actions order by msg_id"
    ).fetchall()
    assert [r["invisible_s"] for r in rows] == [2 * 2147483647, 20 + 2147483647]  # both clamped, both read


# --- clamps: values no validation let through, given to the functions directly ----------------


@pytest.mark.parametrize(
    ("timeout", "timeout_s"),
    [("20 seconds", 20), ("1000 years", 2147483647), ("-1000 years", 0), ("0.2 seconds", 1)],
)
def test_action_message_clamps_a_timeout_no_validation_allows(
    conn: Conn, tenant: str, timeout: str, timeout_s: int
) -> None:
    # Given straight to the function: the interpreter refuses a stored timeout past
    # conveyor.max_action_timeout before it builds a message, but this one must not
    # overflow whatever it is given (ceil(epoch)::integer did past 68 years).
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    row = conn.execute(
        "select conveyor.action_message(r, 1, jsonb_populate_record(s, jsonb_build_object('timeout', %s::text)))"
        " ->> 'timeout_s' as t"
        " from conveyor.step_runs as r, conveyor.workflow_steps as s"
        " where s.step_id = 'welcome' and r.execution_id = %s",
        (timeout, eid),
    ).fetchone()
    assert row == {"t": str(timeout_s)}


@pytest.mark.parametrize(
    ("policy", "attempt", "retry_after", "expected"),
    [
        (
            {"initial": "1s", "max": "1 year"},
            2_147_483_647,
            None,
            31_557_600,
        ),  # 2^(attempt-1) overflowed numeric
        ({"initial": "1s"}, 1, 1e300, 31_557_600),  # a receiver's Retry-After overflowed the integer
        ({"initial": "1s"}, -5, None, 1),
    ],
)
def test_retry_delay_clamps_what_a_policy_or_a_receiver_gives(
    conn: Conn, policy: dict[str, Any], attempt: int, retry_after: float | None, expected: int
) -> None:
    row = conn.execute(
        "select conveyor.retry_delay_s(%s, %s::integer, %s::numeric) as s",
        (Jsonb(policy), attempt, retry_after),
    ).fetchone()
    assert row == {"s": expected}


# --- listing and requeueing -------------------------------------------------------------------


def dead_lettered(conn: Conn, tenant: str, action: dict[str, Any] = WELCOME) -> tuple[int, dict[str, Any]]:
    """An execution whose action was dead-lettered (max_deliveries); its id and step run."""
    eid = start(conn, tenant, then_done(conn, tenant, action), AMOUNT)
    run = queued_run(conn, eid)
    write_back(
        conn,
        {
            "msg_id": run["msg_id"],
            "step_run_id": run["step_run_id"],
            "ok": False,
            "dead_letter": "max_deliveries",
            "error": {"message": "delivered 5 times without a result"},
        },
    )
    return eid, run


def test_dead_letters_are_listed_per_tenant_newest_first(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "globex")
    first, _ = dead_lettered(conn, tenant)
    second, _ = dead_lettered(conn, tenant)
    dead_lettered(conn, "globex")
    listed = conn.execute("select * from conveyor.list_dead_letters('acme', 10)").fetchall()
    assert [(d["execution_id"], d["reason"], d["attempts"]) for d in listed] == [
        (second, "max_deliveries", 0),
        (first, "max_deliveries", 0),
    ]
    assert listed[0]["last_error"] == "delivered 5 times without a result"
    assert len(conn.execute("select * from conveyor.list_dead_letters('acme', 1)").fetchall()) == 1


def test_requeue_runs_the_step_again_and_the_execution_goes_on(conn: Conn, tenant: str) -> None:
    eid, run = dead_lettered(conn, tenant)
    assert execution(conn, eid)["status"] == "failed"
    stats = "select sum(failed) as failed, sum(completed) as completed from conveyor.workflow_stats"
    assert conn.execute(stats).fetchone() == {"failed": 1, "completed": 0}
    [dead] = dead_letters(conn)
    row = conn.execute(
        "select conveyor.requeue_dead_letter(%s, %s) as m", (tenant, dead["dead_letter_id"])
    ).fetchone()
    assert row is not None
    # the next attempt of the step: same input and key, a new message; the execution waits for it
    again = queued_run(conn, eid)
    assert (again["attempt"], again["input"], again["idempotency_key"]) == (
        2,
        run["input"],
        run["idempotency_key"],
    )
    assert again["msg_id"] == row["m"]
    [msg] = queued_messages(conn)
    assert (msg["msg_id"], msg["message"]["attempt"]) == (row["m"], 2)
    e = execution(conn, eid)
    assert (e["status"], e["wait_kind"], e["current_step"], e["error"], e["finished_at"]) == (
        "waiting",
        "action",
        "welcome",
        None,
        None,
    )
    assert dead_letters(conn) == []
    assert conn.execute(stats).fetchone() == {"failed": 0, "completed": 0}
    write_back(conn, ok(again))
    assert execution(conn, eid)["status"] == "completed"
    assert conn.execute(stats).fetchone() == {"failed": 0, "completed": 1}
    logs = conn.execute(
        "select message from conveyor.execution_logs where details ->> 'reason' = 'dead_letter_requeued'"
    ).fetchall()
    assert logs == [
        {"message": f'step "welcome" requeued from dead letter {dead["dead_letter_id"]} (max_deliveries)'}
    ]


def test_a_dead_letter_whose_step_still_waits_is_requeued_with_a_new_message(conn: Conn, tenant: str) -> None:
    # kept while its step could not be failed (the fallback of refuse_action_result)
    eid = start(conn, tenant, flow(conn, tenant), AMOUNT)
    [run] = step_runs(conn, eid)
    conn.execute("select conveyor.keep_dead_letter(%s, 'result_refused', 'x')", (run["msg_id"],))
    conn.execute("select conveyor.archive_actions(array[%s]::bigint[])", (run["msg_id"],))
    # the stalled-action safety net leaves it to the operator
    conn.execute(
        "update conveyor.step_runs set started_at = now() - interval '1 hour' where execution_id = %s", (eid,)
    )
    assert conn.execute("select conveyor.recover_stalled_actions() as n").fetchone() == {"n": 0}
    [dead] = dead_letters(conn)
    row = conn.execute(
        "select conveyor.requeue_dead_letter(%s, %s) as m", (tenant, dead["dead_letter_id"])
    ).fetchone()
    assert row is not None
    [same] = step_runs(conn, eid)
    assert (same["step_run_id"], same["status"], same["msg_id"]) == (run["step_run_id"], "queued", row["m"])
    assert [m["msg_id"] for m in queued_messages(conn)] == [row["m"]]


def test_requeue_refuses_what_cannot_run_again(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "globex")
    moved_on, _ = dead_lettered(conn, tenant, WELCOME | {"on_error": "continue"})
    assert execution(conn, moved_on)["status"] == "completed"
    retried, _ = dead_lettered(conn, tenant)
    conn.execute("select conveyor.retry_execution(%s, %s)", (tenant, retried))
    orphan = conn.execute(
        "insert into conveyor.dead_letters (tenant_id, msg_id, reason, last_error, attempts)"
        " values (%s, 99, 'malformed_message', 'x', 1) returning dead_letter_id",
        (tenant,),
    ).fetchone()
    assert orphan is not None
    ids = {d["execution_id"]: d["dead_letter_id"] for d in dead_letters(conn)}

    def requeue(tenant_id: str, dead_letter_id: int) -> None:
        conn.execute("select conveyor.requeue_dead_letter(%s, %s)", (tenant_id, dead_letter_id))

    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match='is completed, and step "welcome" is no longer'
    ):
        requeue(tenant, ids[moved_on])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"is failed \(retried as execution \d+\)"):
        requeue(tenant, ids[retried])
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="names no step run: there is no step to run again"
    ):
        requeue(tenant, orphan["dead_letter_id"])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='does not exist for tenant "globex"'):
        requeue("globex", ids[moved_on])
    assert len(dead_letters(conn)) == 3  # nothing changed


def test_two_operators_requeueing_at_once_send_it_once(conn: Conn, db_url: str, tenant: str) -> None:
    eid, _ = dead_lettered(conn, tenant)
    [dead] = dead_letters(conn)
    errors: list[str] = []

    def second() -> None:
        with psycopg.connect(db_url, autocommit=True) as other:
            try:
                other.execute("select conveyor.requeue_dead_letter(%s, %s)", (tenant, dead["dead_letter_id"]))
            except psycopg.errors.InvalidParameterValue as exc:
                errors.append(exc.diag.message_primary or "")

    with psycopg.connect(db_url) as first:
        first.execute("select conveyor.requeue_dead_letter(%s, %s)", (tenant, dead["dead_letter_id"]))
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()  # waits for the first one's lock on the dead letter
        first.commit()
    thread.join(timeout=10)
    assert errors == [f'dead letter {dead["dead_letter_id"]} does not exist for tenant "acme"']
    assert len(queued_messages(conn)) == 1
    assert len([r for r in step_runs(conn, eid) if r["status"] == "queued"]) == 1


def test_old_dead_letters_are_pruned_with_the_tenants_history(conn: Conn, tenant: str) -> None:
    dead_lettered(conn, tenant)
    dead_lettered(conn, tenant)
    conn.execute(
        "update conveyor.dead_letters set dead_at = now() - interval '31 days'"
        " where dead_letter_id = (select min(dead_letter_id) from conveyor.dead_letters)"
    )
    result = conn.execute("select conveyor.prune_history(now()) as r").fetchone()
    assert result is not None and result["r"]["dead_letters"] == 1
    assert len(dead_letters(conn)) == 1


def test_the_application_role_lists_its_verified_tenants_dead_letters_and_requeues_none(
    conn: Conn, db_url: str, tenant: str
) -> None:
    make_tenant(conn, "globex")
    eid, _ = dead_lettered(conn, tenant)
    dead_lettered(conn, "globex")
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute("set role conveyor_app")
        with acting_for(app, mint_token(conn, "acme")):
            assert app.execute("select tenant_id from conveyor.dead_letters").fetchall() == [("acme",)]
            rows = app.execute("select execution_id from conveyor.list_dead_letters('acme', 5)").fetchall()
            assert rows == [(eid,)]
        with (
            pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="'globex' is not this session's tenant"
            ),
            acting_for(app, mint_token(conn, "acme")),
        ):
            app.execute("select * from conveyor.list_dead_letters('globex', 5)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(app, mint_token(conn, "acme")):
            app.execute("select conveyor.requeue_dead_letter('acme', 1)")


def test_list_dead_letters_refuses_a_limit_that_is_not_a_count(conn: Conn, tenant: str) -> None:
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="p_limit: -1 is not a number of dead letters"
    ):
        conn.execute("select * from conveyor.list_dead_letters('acme', -1)")
