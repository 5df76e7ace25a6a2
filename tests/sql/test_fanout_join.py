"""Fan-out joins (sql/fanout_join.sql): the parent continues when the counters of its open
children reach what its join needs, whatever order the children finish in; two children
finishing at the same instant from two sessions are each counted once; a for_each never has
more items in flight than its concurrency."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from tests.sql.fanout_helpers import answer, children, doc, execution, fanout, hook, pending_actions, run

Conn = psycopg.Connection[dict[str, Any]]

_slugs = itertools.count()


def parallel_doc(n: int, join: Any) -> dict[str, Any]:
    branches = {f"b{i}": [hook(f"call{i}", url=f"https://example.test/{i}")] for i in range(n)}
    return doc(
        f"par-{next(_slugs)}",
        {"id": "fan", "parallel": {"branches": branches, "join": join}},
        {"id": "after", "set": {"joined": True}},
    )


def expected_outcome(n: int, join: Any, results: list[bool]) -> tuple[str, int]:
    """The model: the join's outcome and how many results it counted before deciding."""
    needed = n if join == "all" else 1 if join == "any" else join["at_least"]
    ok = bad = 0
    for count, result in enumerate(results, start=1):
        ok, bad = ok + result, bad + (not result)
        if join == "all":
            if bad:
                return "failed", count
            if ok == n:
                return "completed", count
        elif ok >= needed:
            return "completed", count
        elif ok + (n - ok - bad) < needed:
            return "failed", count
    raise AssertionError("every child answered and no outcome")


@st.composite
def join_cases(draw: st.DrawFn) -> tuple[int, Any, list[int], list[bool]]:
    n = draw(st.integers(min_value=1, max_value=5))
    join = draw(st.sampled_from(["all", "any", "at_least"]))
    if join == "at_least":
        join = {"at_least": draw(st.integers(min_value=1, max_value=n))}
    order = draw(st.permutations(list(range(n))))
    results = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return n, join, list(order), results


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=join_cases())
def test_join_semantics_hold_for_any_completion_order(conn: Conn, tenant: str, case: tuple) -> None:
    n, join, order, results = case
    parent = run(conn, tenant, parallel_doc(n, join))
    kids = children(conn, parent)
    assert [k["status"] for k in kids] == ["waiting"] * n
    by_child = {k["execution_id"]: k for k in kids}
    outcome, counted = expected_outcome(n, join, [results[i] for i in order])

    for i in order:
        child_id = kids[i]["execution_id"]
        for queued in pending_actions(conn, [child_id]):
            answer(conn, queued, ok=results[i])
    state = execution(conn, parent)
    assert state["status"] == outcome, (case, state["error"])
    f = fanout(conn, parent)
    assert f["state"] == "joined" and f["outcome"] == outcome
    assert f["succeeded"] + f["failed"] == counted
    final = {k["execution_id"]: k["status"] for k in children(conn, parent)}
    answered = {kids[i]["execution_id"] for i in order[:counted]}
    assert all(final[c] in ("completed", "failed") for c in answered)
    assert all(final[c] == "cancelled" for c in by_child if c not in answered)
    if outcome == "completed":
        after = conn.execute(
            "select count(*) as n from conveyor.step_runs where execution_id = %s and step_id = 'after'",
            (parent,),
        ).fetchone()
        assert after is not None and after["n"] == 1


def test_branch_outputs_are_visible_to_later_steps(conn: Conn, tenant: str) -> None:
    d = doc(
        "outputs",
        {
            "id": "fan",
            "parallel": {
                "branches": {
                    "warehouse": [{"id": "pick", "set": {"bin": "A7"}}],
                    "customer": [
                        hook("mail"),
                        {"id": "sent", "set": {"mailed": "{{steps.mail.output.status}}"}},
                    ],
                }
            },
        },
        {
            "id": "after",
            "set": {
                "bin": "{{steps.fan.output.branches.warehouse.output.bin}}",
                "mailed": "{{steps.fan.output.branches.customer.steps.sent.output.mailed}}",
            },
        },
    )
    parent = run(conn, tenant, d)
    assert execution(conn, parent)["status"] == "waiting"
    customer = next(k for k in children(conn, parent) if k["item"]["branch"] == "customer")
    answer(conn, pending_actions(conn, [customer["execution_id"]])[0], output={"status": 202})
    state = execution(conn, parent)
    assert state["status"] == "completed"
    assert state["vars"] == {"bin": "A7", "mailed": 202}
    branches = state["step_outputs"]["fan"]["output"]["branches"]
    assert branches["warehouse"]["status"] == "completed" and branches["customer"]["output"] == {
        "mailed": 202
    }


def finish_at_once(
    db_url: str, result: dict[str, Any], barrier: threading.Barrier, errors: list[BaseException]
) -> None:
    """Writes one result back in its own session, released together with the others."""
    try:
        with psycopg.connect(db_url, row_factory=dict_row) as session:
            session.execute("select 1")
            barrier.wait(timeout=10)
            answer(session, result)  # type: ignore[arg-type]
            session.commit()
    except BaseException as error:
        errors.append(error)


def test_two_children_finishing_at_once_are_each_counted_once(conn: Conn, tenant: str, db_url: str) -> None:
    for attempt in range(8):
        parent = run(conn, tenant, parallel_doc(3, "all"))
        kids = [k["execution_id"] for k in children(conn, parent)]
        queued = pending_actions(conn, kids)
        # the third finishes first, alone; then the two others at the same instant
        answer(conn, queued[2])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        threads = [
            threading.Thread(target=finish_at_once, args=(db_url, q, barrier, errors)) for q in queued[:2]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == [], errors
        f = fanout(conn, parent)
        assert (f["succeeded"], f["failed"], f["open"], f["state"]) == (3, 0, 0, "joined"), (attempt, f)
        state = execution(conn, parent)
        assert state["status"] == "completed"
        after = conn.execute(
            "select count(*) as n from conveyor.step_runs where execution_id = %s and step_id = 'after'",
            (parent,),
        ).fetchone()
        assert after is not None and after["n"] == 1


def test_for_each_never_has_more_items_in_flight_than_its_concurrency(conn: Conn, tenant: str) -> None:
    d = doc(
        "limited",
        {
            "id": "each",
            "for_each": {
                "items": "{{trigger.payload.ids}}",
                "concurrency": 3,
                "steps": [hook("push", url="https://example.test/{{item}}")],
            },
        },
    )
    parent = run(conn, tenant, d, {"ids": list(range(10))})
    most = 0
    answered = 0
    order = [7, 0, 3, 1, 9, 2, 8, 4, 6, 5]
    while execution(conn, parent)["status"] == "waiting":
        kids = [k["execution_id"] for k in children(conn, parent)]
        queued = pending_actions(conn, kids)
        running = conn.execute(
            "select count(*) as n from conveyor.executions where fanout_id = %s and status in ('pending', 'running')"
            " or (fanout_id = %s and status = 'waiting' and wait_kind <> 'turn')",
            (fanout(conn, parent)["fanout_id"], fanout(conn, parent)["fanout_id"]),
        ).fetchone()
        assert running is not None
        most = max(most, len(queued), running["n"])
        assert len(queued) <= 3 and running["n"] <= 3
        # answer the in-flight item that comes first in a shuffled order
        by_child = {q["execution_id"]: q for q in queued}
        index_of = {k["execution_id"]: k["child_index"] for k in children(conn, parent)}
        pick = min(by_child, key=lambda c: order.index(index_of[c]))
        answer(conn, by_child[pick])
        answered += 1
    assert answered == 10 and most == 3
    output = execution(conn, parent)["step_outputs"]["each"]["output"]
    assert [i["index"] for i in output["items"]] == list(range(10))
    assert output["completed"] == 10 and output["count"] == 10


def test_on_item_error_continue_and_collect_go_on_fail_stops(conn: Conn, tenant: str) -> None:
    body = [
        {"id": "check", "if": {"field": "item", "op": "gt", "value": 1}, "then": "bad", "else": "good"},
        {"id": "bad", "stop": {"status": "failed", "reason": "item {{item}} too big"}},
        {"id": "good", "set": {"ok": "{{item}}"}},
    ]
    results = {}
    for policy in ("fail", "continue", "collect"):
        d = doc(
            f"policy-{policy}",
            {"id": "each", "for_each": {"items": [0, 1, 2, 3], "on_item_error": policy, "steps": body}},
            {"id": "after", "set": {"went_on": True}},
        )
        parent = run(conn, tenant, d)
        results[policy] = execution(conn, parent)
    assert results["fail"]["status"] == "failed"
    assert (
        "2 of 4 items failed" in results["fail"]["error"]["message"]
        or "of 4 items failed" in results["fail"]["error"]["message"]
    )
    for policy in ("continue", "collect"):
        state = results[policy]
        assert state["status"] == "completed", state["error"]
        out = state["step_outputs"]["each"]["output"]
        assert (out["completed"], out["failed"]) == (2, 2)
        assert [i["status"] for i in out["items"]] == ["completed", "completed", "failed", "failed"]
    assert [e["index"] for e in results["collect"]["step_outputs"]["each"]["output"]["errors"]] == [2, 3]
    assert "errors" not in results["continue"]["step_outputs"]["each"]["output"]
