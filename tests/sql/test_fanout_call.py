"""The call step (sql/steps/call.sql): another workflow of the tenant started as a child with
an input, its version pinned when the call starts, waited for (its output becomes the step's)
or fired and forgotten; calls that call each other end at the depth limit; a dry run shows
what every branch, item and call would do."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.fanout_helpers import answer, children, doc, execution, hook, pending_actions, run
from tests.sql.interpreter_helpers import dry_run
from tests.sql.workflow_documents import publish

Conn = psycopg.Connection[dict[str, Any]]


def callee(version_mark: str) -> dict[str, Any]:
    return doc(
        "enrich",
        hook("lookup"),
        {"id": "done", "set": {"grade": "{{trigger.payload.score}}-" + version_mark}},
    )


def test_a_call_waits_for_the_callee_and_takes_its_output(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, callee("v1"))
    parent = run(
        conn,
        tenant,
        doc(
            "caller",
            {"id": "ask", "call": {"workflow": "enrich", "input": {"score": "{{trigger.payload.score}}"}}},
            {"id": "after", "set": {"grade": "{{steps.ask.output.output.grade}}"}},
        ),
        {"score": 7},
    )
    (child,) = children(conn, parent)
    assert child["trigger"]["payload"] == {"score": 7}
    assert child["trigger"]["caller"] == {
        "execution_id": parent,
        "workflow_id": execution(conn, parent)["workflow_id"],
        "step": "ask",
    }
    assert child["depth"] == 1 and child["item"] is None
    # a new version published while the call runs does not change the running callee
    publish(conn, tenant, callee("v2"))
    answer(conn, pending_actions(conn, [child["execution_id"]])[0])
    state = execution(conn, parent)
    assert state["status"] == "completed"
    assert state["vars"] == {"grade": "7-v1"}
    out = state["step_outputs"]["ask"]["output"]
    assert (out["workflow"], out["version"], out["status"]) == ("enrich", 1, "completed")
    # the callee's run counts in its own workflow's stats
    stats = conn.execute(
        "select sum(started) as s, sum(completed) as c from conveyor.workflow_stats as s"
        " join conveyor.workflows as w using (workflow_id) where w.slug = 'enrich'"
    ).fetchone()
    assert stats == {"s": 1, "c": 1}


def test_a_call_with_wait_false_does_not_wait(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, callee("v1"))
    parent = run(
        conn,
        tenant,
        doc(
            "fire",
            {"id": "ask", "call": {"workflow": "enrich", "wait": False}},
            {"id": "after", "set": {"started": "{{steps.ask.output.execution_id}}"}},
        ),
    )
    state = execution(conn, parent)
    assert state["status"] == "completed"
    started = state["vars"]["started"]
    assert execution(conn, started)["status"] == "waiting"
    assert execution(conn, started)["parent_execution_id"] is None
    # cancelling the caller later does not reach a callee it did not wait for
    assert children(conn, parent) == []


def test_a_failed_callee_fails_the_call_step(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, doc("breaks", {"id": "no", "stop": {"status": "failed", "reason": "no credit"}}))
    state = execution(conn, run(conn, tenant, doc("caller", {"id": "ask", "call": {"workflow": "breaks"}})))
    assert state["status"] == "failed"
    assert state["error"]["message"] == 'step "ask": the called workflow failed: no credit'


def test_a_template_slug_is_checked_when_the_call_runs(conn: Conn, tenant: str) -> None:
    state = execution(
        conn,
        run(
            conn,
            tenant,
            doc("dyn", {"id": "ask", "call": {"workflow": "{{trigger.payload.w}}"}}),
            {"w": "missing"},
        ),
    )
    assert state["status"] == "failed"
    assert (
        state["error"]["message"]
        == 'step "ask": call.workflow: tenant "acme" has no published workflow "missing"'
    )


def test_workflows_calling_each_other_stop_at_the_depth_limit(conn: Conn, tenant: str) -> None:
    conn.execute("set conveyor.max_event_depth = 4")
    publish(conn, tenant, doc("ping", {"id": "x", "set": {"v": 1}}))
    publish(
        conn,
        tenant,
        doc(
            "pong",
            {"id": "back", "call": {"workflow": "{{trigger.payload.next}}", "input": {"next": "pong"}}},
        ),
    )
    root = run(
        conn, tenant, doc("start", {"id": "go", "call": {"workflow": "pong", "input": {"next": "pong"}}})
    )
    state = execution(conn, root)
    assert state["status"] == "failed"
    chain = [root]
    while kids := children(conn, chain[-1]):
        chain.append(kids[0]["execution_id"])
    assert len(chain) == 5
    deepest = execution(conn, chain[-1])
    assert deepest["depth"] == 4 and deepest["status"] == "failed"
    assert (
        "depth 5 would exceed the limit 4 (setting conveyor.max_event_depth); workflows that call each other?"
        in (deepest["error"]["message"])
    )


def test_a_dry_run_shows_every_branch_item_and_call(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, callee("v1"))
    d = doc(
        "order-fan-out",
        {
            "id": "each",
            "for_each": {
                "items": "{{trigger.payload.lines}}",
                "steps": [hook("reserve", url="https://stock.test/{{item.sku}}")],
            },
        },
        {
            "id": "tell",
            "parallel": {
                "branches": {
                    "warehouse": [hook("pick")],
                    "customer": [{"id": "ask", "call": {"workflow": "enrich"}}],
                }
            },
        },
    )
    result = dry_run(conn, d, {"payload": {"lines": [{"sku": "a"}, {"sku": "b"}]}})
    assert result["status"] == "completed", result
    each, tell = result["steps"]
    assert each["decision"] == "would start 2 items (join all): 0 completed, 1 completed"
    urls = [c["would"][0]["would_send"]["input"]["url"] for c in each["output"]["children"]]
    assert urls == ["https://stock.test/a", "https://stock.test/b"]
    branches = {c["key"]: c for c in tell["output"]["children"]}
    assert branches["warehouse"]["would"][0]["kind"] == "action"
    call_step = branches["customer"]["would"][0]
    assert call_step["kind"] == "call"
    assert call_step["output"]["children"][0]["would"][0]["step"] == "lookup"
    # nothing was stored
    assert conn.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 0}
