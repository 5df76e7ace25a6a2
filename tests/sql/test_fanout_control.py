"""Control reaching children (sql/control.sql, sql/fanout_join.sql): cancelling or pausing a
parent reaches its children, a retry from the failed fan-out step runs again only what did
not complete, a join times out, and the fan-out budgets refuse with a named setting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.fanout_helpers import answer, children, doc, execution, fanout, hook, pending_actions, run

Conn = psycopg.Connection[dict[str, Any]]


def items_doc(slug: str, n: int = 3, **spec: Any) -> dict[str, Any]:
    return doc(
        slug,
        {"id": "each", "for_each": {"items": list(range(n)), "steps": [hook("push")]} | spec},
        {"id": "after", "set": {"done": True}},
    )


def test_cancelling_a_parent_cancels_its_children_and_their_actions(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("cancel", 4, concurrency=2))
    kids = children(conn, parent)
    assert [k["status"] for k in kids] == ["waiting", "waiting", "waiting", "waiting"]
    assert [k["wait_kind"] for k in kids] == ["action", "action", "turn", "turn"]
    queued = pending_actions(conn, [k["execution_id"] for k in kids])
    conn.execute("select conveyor.cancel_execution(%s, %s, 'order withdrawn')", (tenant, parent))
    assert execution(conn, parent)["status"] == "cancelled"
    assert {k["status"] for k in children(conn, parent)} == {"cancelled"}
    assert fanout(conn, parent)["state"] == "joined"
    archived = {r["msg_id"] for r in conn.execute("select msg_id from pgmq.a_conveyor_actions")}
    assert {q["msg_id"] for q in queued} <= archived
    # a late result for a cancelled child changes nothing
    answer(conn, queued[0])
    assert children(conn, parent)[0]["status"] == "cancelled"


def test_pausing_a_parent_pauses_its_children_and_resuming_goes_on(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("pause", 2))
    conn.execute("select conveyor.pause_execution(%s, %s)", (tenant, parent))
    kids = children(conn, parent)
    assert all(k["paused_at"] is not None for k in kids)
    for queued in pending_actions(conn, [k["execution_id"] for k in kids]):
        answer(conn, queued)
    # the actions' results are recorded, but paused children take no further step
    assert [k["status"] for k in children(conn, parent)] == ["running", "running"]
    assert execution(conn, parent)["status"] == "waiting"
    conn.execute("select conveyor.resume_execution(%s, %s)", (tenant, parent))
    assert [k["status"] for k in children(conn, parent)] == ["completed", "completed"]
    state = execution(conn, parent)
    assert state["status"] == "completed" and state["vars"] == {"done": True}


def test_a_retry_runs_again_only_the_children_that_did_not_complete(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("retry", 3))
    kids = children(conn, parent)
    runs = pending_actions(conn, [k["execution_id"] for k in kids])
    answer(conn, runs[0])
    answer(conn, runs[1], ok=False)
    assert execution(conn, parent)["status"] == "failed"
    assert [k["status"] for k in children(conn, parent)] == ["completed", "failed", "cancelled"]

    row = conn.execute("select conveyor.retry_execution(%s, %s) as id", (tenant, parent)).fetchone()
    assert row is not None
    retry = int(row["id"])
    again = children(conn, retry)
    assert [k["status"] for k in again] == ["completed", "waiting", "waiting"]
    assert again[0]["retry_of"] == kids[0]["execution_id"]
    assert len(pending_actions(conn, [k["execution_id"] for k in again])) == 2
    for queued in pending_actions(conn, [k["execution_id"] for k in again]):
        answer(conn, queued, output={"status": 201})
    state = execution(conn, retry)
    assert state["status"] == "completed"
    items = state["step_outputs"]["each"]["output"]["items"]
    assert [i["output"] for i in items] == [{"status": 200}, {"status": 201}, {"status": 201}]
    # a child is retried through its parent
    try:
        conn.execute("select conveyor.retry_execution(%s, %s)", (tenant, kids[1]["execution_id"]))
        raise AssertionError("retrying a child directly should be refused")
    except psycopg.errors.InvalidParameterValue as refused:
        assert f"retry execution {parent}" in str(refused)


def test_a_join_times_out_and_cancels_what_still_runs(conn: Conn, tenant: str) -> None:
    d = doc(
        "slow",
        {
            "id": "fan",
            "parallel": {"branches": {"a": [hook("a1")], "b": [hook("b1")]}, "timeout": "10m"},
            "on_error": "continue",
        },
        {"id": "after", "set": {"went_on": True}},
    )
    parent = run(conn, tenant, d)
    kids = children(conn, parent)
    answer(conn, pending_actions(conn, [kids[0]["execution_id"]])[0])
    due = execution(conn, parent)["resume_at"]
    assert due is not None
    assert (
        conn.execute("select conveyor.resume_due(%s)", (due - timedelta(seconds=1),)).fetchone() is not None
    )
    assert execution(conn, parent)["status"] == "waiting"
    conn.execute("select conveyor.resume_due(%s)", (due + timedelta(seconds=1),))
    state = execution(conn, parent)
    assert state["status"] == "completed" and state["vars"] == {"went_on": True}
    error = state["step_outputs"]["fan"]["error"]
    assert (
        error["outcome"] == "timed_out"
        and "the join timed out with 1 of 2 children finished" in error["message"]
    )
    assert [k["status"] for k in children(conn, parent)] == ["completed", "cancelled"]


def test_fan_out_budgets_fail_the_step_with_the_setting_named(conn: Conn, tenant: str) -> None:
    conn.execute("set conveyor.max_fanout_children = 3")
    parent = run(
        conn,
        tenant,
        doc(
            "wide",
            {
                "id": "each",
                "for_each": {"items": "{{trigger.payload.ids}}", "steps": [{"id": "x", "set": {"v": 1}}]},
            },
        ),
        {"ids": [1, 2, 3, 4]},
    )
    state = execution(conn, parent)
    assert state["status"] == "failed"
    assert state["error"]["message"] == (
        'step "each": 4 items exceed the limit of 3 per step (setting conveyor.max_fanout_children)'
    )
    assert children(conn, parent) == []
    conn.execute("reset conveyor.max_fanout_children")
    conn.execute("set conveyor.max_fanout_children_per_execution = 5")
    loop = doc(
        "loop",
        {"id": "each", "for_each": {"items": [1, 2, 3], "steps": [{"id": "x", "set": {"v": 1}}]}},
        {"id": "again", "set": {"round": 1}, "next": "each"},
    )
    state = execution(conn, run(conn, tenant, loop))
    assert state["status"] == "failed"
    assert "fan-out budget spent" in state["error"]["message"]
    assert "setting conveyor.max_fanout_children_per_execution" in state["error"]["message"]


def test_a_for_each_over_a_non_array_fails_the_step_clearly(conn: Conn, tenant: str) -> None:
    state = execution(
        conn,
        run(
            conn,
            tenant,
            doc(
                "bad",
                {
                    "id": "each",
                    "for_each": {
                        "items": "{{trigger.payload.lines}}",
                        "steps": [{"id": "x", "set": {"v": 1}}],
                    },
                },
            ),
            {"lines": "abc"},
        ),
    )
    assert state["status"] == "failed"
    assert (
        state["error"]["message"]
        == 'step "each": for_each.items is string, expected an array (from "{{trigger.payload.lines}}")'
    )
    empty = execution(
        conn,
        run(
            conn,
            tenant,
            doc(
                "none",
                {
                    "id": "each",
                    "for_each": {
                        "items": "{{trigger.payload.lines}}",
                        "steps": [{"id": "x", "set": {"v": 1}}],
                    },
                },
            ),
            {"lines": []},
        ),
    )
    assert empty["status"] == "completed" and empty["step_outputs"]["each"]["output"]["count"] == 0


def test_a_dead_lettered_child_fails_by_its_parent_steps_policy(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("dead", 2, on_item_error="continue"))
    first, second = pending_actions(conn, [k["execution_id"] for k in children(conn, parent)])
    conn.execute(
        "select * from conveyor.write_back(%s)",
        (
            Jsonb(
                [
                    {
                        "msg_id": first["msg_id"],
                        "step_run_id": first["step_run_id"],
                        "ok": False,
                        "dead_letter": "max_deliveries",
                        "error": "delivered 6 times",
                    }
                ]
            ),
        ),
    )
    answer(conn, second)
    state = execution(conn, parent)
    assert state["status"] == "completed" and state["vars"] == {"done": True}
    out = state["step_outputs"]["each"]["output"]
    assert (out["completed"], out["failed"]) == (1, 1)
    assert out["items"][0]["error"]["detail"]["dead_letter"] == "max_deliveries"
    assert conn.execute("select count(*) as n from conveyor.dead_letters").fetchone() == {"n": 1}


def test_children_are_listed_under_their_parent_not_as_runs_of_their_own(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("listed", 2))
    listed = conn.execute("select id from conveyor.list_executions(%s)", (tenant,)).fetchall()
    assert [r["id"] for r in listed] == [parent]
    shown = conn.execute("select * from conveyor.execution_children(%s, %s)", (tenant, parent)).fetchall()
    assert [(c["step"], c["label"], c["status"]) for c in shown] == [
        ("each", "item 0", "waiting"),
        ("each", "item 1", "waiting"),
    ]
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('globex', 'Globex')")
    assert conn.execute("select * from conveyor.execution_children('globex', %s)", (parent,)).fetchall() == []


def test_a_join_decided_while_its_parent_is_paused_waits_for_the_resume(conn: Conn, tenant: str) -> None:
    parent = run(conn, tenant, items_doc("race", 1))
    # as if the pause took the parent but not yet its child (a child held by a runner)
    conn.execute("update conveyor.executions set paused_at = now() where execution_id = %s", (parent,))
    answer(conn, pending_actions(conn, [children(conn, parent)[0]["execution_id"]])[0])
    assert fanout(conn, parent)["state"] == "ready"
    assert execution(conn, parent)["status"] == "waiting"
    # the tick does not spin on it (nothing due) and does not apply it
    due = conn.execute("select conveyor.fanout_next_due_at() as t").fetchone()
    assert due == {"t": None}
    conn.execute("select conveyor.resume_due()")
    assert execution(conn, parent)["status"] == "waiting"
    conn.execute("select conveyor.resume_execution(%s, %s)", (tenant, parent))
    assert execution(conn, parent)["status"] == "completed"
    assert fanout(conn, parent)["state"] == "joined"


def test_children_read_the_parents_trigger_and_outputs_from_their_fan_out(conn: Conn, tenant: str) -> None:
    lines = [{"sku": f"s{i}", "note": "x" * 200} for i in range(200)]
    d = doc(
        "shared",
        {"id": "first", "set": {"order": "{{trigger.entity_id}}"}},
        {
            "id": "each",
            "for_each": {
                "items": "{{trigger.payload.lines}}",
                "steps": [
                    {
                        "id": "line",
                        "set": {
                            "tag": "{{steps.first.output.order}}-{{item.sku}}-{{trigger.payload.lines.0.sku}}"
                        },
                    }
                ],
            },
        },
    )
    parent = run(conn, tenant, d, {"lines": lines})
    state = execution(conn, parent)
    assert state["status"] == "completed"
    assert state["step_outputs"]["each"]["output"]["items"][7]["output"] == {"tag": "o1-s7-s0"}
    stored = conn.execute(
        "select trigger, step_outputs, pg_column_size(trigger) as size from conveyor.executions"
        " where parent_execution_id = %s order by child_index",
        (parent,),
    ).fetchall()
    # the 60 kB trigger is kept once, in the fan-out, not in each of the 200 children
    assert all(r["trigger"] == {} and r["size"] < 16 for r in stored)
    assert stored[7]["step_outputs"] == {"line": {"output": {"tag": "o1-s7-s0"}}}
    shown = conn.execute(
        "select trigger from conveyor.execution_detail(%s, %s)",
        (tenant, children(conn, parent)[7]["execution_id"]),
    ).fetchone()
    assert shown is not None and shown["trigger"]["payload"]["lines"][7]["sku"] == "s7"


def test_a_child_whose_join_closed_without_it_is_cancelled_when_it_next_runs(conn: Conn, tenant: str) -> None:
    # as if the join's cancel skipped this child because a runner held it at that instant
    parent = run(conn, tenant, items_doc("orphan", 2, on_item_error="continue"))
    first, second = children(conn, parent)
    conn.execute(
        "update conveyor.fanouts set state = 'joined', outcome = 'cancelled' where execution_id = %s",
        (parent,),
    )
    answer(conn, pending_actions(conn, [first["execution_id"]])[0])
    orphan = execution(conn, first["execution_id"])
    assert orphan["status"] == "cancelled"
    assert (
        orphan["error"]["message"]
        == f"not needed: the join of parent execution {parent} was decided without it"
    )
    # its finish counts nothing in the closed fan-out
    assert fanout(conn, parent)["succeeded"] == 0
    assert execution(conn, second["execution_id"])["status"] == "waiting"
