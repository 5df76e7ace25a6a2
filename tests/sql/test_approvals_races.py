"""Exactly-once continuation of an approval: decisions by two real connections at the same
instant, a decision while the execution is locked by another transaction, and the tick
applying what a lock held back (sql/approvals.sql explains the locking)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.sql.approval_helpers import ask, decide, request_of, result, tick
from tests.sql.interpreter_helpers import execution, visited

Conn = psycopg.Connection[dict[str, Any]]

PAIR = {"approvers": ["ann", "bob"], "due": "2d"}


def runs_of(conn: Conn, execution_id: int, step: str) -> int:
    row = conn.execute(
        "select count(*) as n from conveyor.step_runs where execution_id = %s and step_id = %s",
        (execution_id, step),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def wait_until_blocked(conn: Conn, pid: int) -> None:
    """Until backend `pid` waits for a lock (it queued behind the other decision)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
        if row is not None and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


def decide_in_thread(db_url: str, user: str, request_id: int, outcome: dict[str, Any]) -> threading.Thread:
    """Decides in a session of its own, committed; its pid is in outcome["pid"] at once."""
    ready = threading.Event()

    def run() -> None:
        try:
            with psycopg.connect(db_url, row_factory=dict_row) as session:
                row = session.execute("select pg_backend_pid() as pid").fetchone()
                assert row is not None
                outcome["pid"] = row["pid"]
                ready.set()
                outcome["answer"] = decide(session, "acme", user, request_id, "approve")
                session.commit()
        except BaseException as error:
            outcome["error"] = error
        finally:
            ready.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(10)
    return thread


def approve_at_the_same_instant(
    db_url: str, conn: Conn, spec: dict[str, Any]
) -> tuple[int, int, Any, dict[str, Any]]:
    """ann approves in a transaction; bob approves meanwhile (and waits); then ann commits.
    Returns the execution, the request, ann's answer and what bob's session got."""
    execution_id = ask(conn, "acme", spec)
    request_id = request_of(conn, execution_id)["request_id"]
    with psycopg.connect(db_url, row_factory=dict_row) as first:
        first_answer = decide(first, "acme", "ann", request_id, "approve")
        second: dict[str, Any] = {}
        thread = decide_in_thread(db_url, "bob", request_id, second)
        wait_until_blocked(conn, second["pid"])
        first.commit()
        thread.join(30)
    return execution_id, request_id, first_answer, second


def test_two_approvals_at_the_same_instant_decide_an_all_quorum_once(
    db_url: str, conn: Conn, tenant: str
) -> None:
    # Both approve while the other's decision is uncommitted: the second must see the first's
    # vote (the request row's lock), or neither would see the quorum reached and the
    # execution would wait forever; and the execution must continue once.
    execution_id, _, first_answer, second = approve_at_the_same_instant(db_url, conn, PAIR)
    assert "error" not in second, second.get("error")
    assert (first_answer["continued"], second["answer"]["continued"]) == (False, True)
    assert result(conn, execution_id) == ("completed", "approved")
    assert (runs_of(conn, execution_id, "ask"), runs_of(conn, execution_id, "yes")) == (1, 1)
    decisions = execution(conn, execution_id)["step_outputs"]["ask"]["output"]["decisions"]
    assert [d["user"] for d in decisions] == ["ann", "bob"]


def test_two_approvals_at_the_same_instant_of_an_any_quorum_continue_once(
    db_url: str, conn: Conn, tenant: str
) -> None:
    execution_id, request_id, first_answer, second = approve_at_the_same_instant(
        db_url, conn, {**PAIR, "quorum": "any"}
    )
    assert first_answer["continued"] is True
    error = second.get("error")
    assert isinstance(error, psycopg.errors.ObjectNotInPrerequisiteState), error
    assert f"approval request {request_id} is already approved" in str(error)
    assert result(conn, execution_id) == ("completed", "approved")
    assert visited(conn, execution_id) == ["ask", "yes"]


def approve_at_once(
    db_url: str, user: str, request_id: int, barrier: threading.Barrier, errors: list[BaseException]
) -> None:
    """Approves in a session of its own, released together with the other."""
    try:
        with psycopg.connect(db_url, row_factory=dict_row) as session:
            session.execute("select 1")
            barrier.wait(timeout=10)
            decide(session, "acme", user, request_id, "approve")
            session.commit()
    except BaseException as error:
        errors.append(error)


def test_racing_approvers_released_together_always_continue_once(
    db_url: str, conn: Conn, tenant: str
) -> None:
    for attempt in range(6):
        execution_id = ask(conn, tenant, PAIR)
        request_id = request_of(conn, execution_id)["request_id"]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=approve_at_once, args=(db_url, u, request_id, barrier, errors))
            for u in ("ann", "bob")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == [], errors
        assert result(conn, execution_id) == ("completed", "approved"), attempt
        assert runs_of(conn, execution_id, "yes") == 1, attempt


def test_a_decision_while_the_execution_is_locked_is_applied_by_the_tick_once(
    db_url: str, conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "quorum": "any"})
    request_id = request_of(conn, execution_id)["request_id"]
    with psycopg.connect(db_url, row_factory=dict_row) as holder:
        holder.execute(
            "select 1 from conveyor.executions where execution_id = %s for update", (execution_id,)
        )
        # the decision does not wait for the execution's lock
        answer = decide(conn, tenant, "ann", request_id, "approve")
        assert (answer["state"], answer["outcome"], answer["continued"]) == ("decided", "approved", False)
        # a tick meanwhile skips the locked execution
        tick(conn)
        assert execution(conn, execution_id)["status"] == "waiting"
        holder.rollback()
    assert tick(conn)["next_due_at"] is None
    assert result(conn, execution_id) == ("completed", "approved")
    assert request_of(conn, execution_id)["state"] == "closed"
    assert runs_of(conn, execution_id, "yes") == 1
    # the tick has nothing left to do for it
    tick(conn)
    assert runs_of(conn, execution_id, "yes") == 1
