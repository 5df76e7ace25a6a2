"""Fan-out documents (sql/steps/parallel.sql, for_each.sql, call.sql; nested step lists in
sql/step_kinds.sql and sql/workflow_validation.sql): every problem named by its path, routes
that stay within their list, {{item}} only inside a for_each body, nesting bounded, calls to
unknown slugs or to itself refused at publish."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.fanout_helpers import doc
from tests.sql.workflow_documents import problems, publish

Conn = psycopg.Connection[dict[str, Any]]


def one(step: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    return doc("d", step, *more)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            {"id": "p", "parallel": []},
            ['steps[0].parallel: expected an object with "branches": {"<name>": [<steps>], ...}'],
        ),
        (
            {"id": "p", "parallel": {"branches": {}}},
            ["steps[0].parallel.branches: expected an object of named branches, each a list of steps"],
        ),
        (
            {"id": "p", "parallel": {"branches": {"a": [], "B c": [{"id": "x", "set": {"v": 1}}]}}},
            [
                'steps[0].parallel.branches: invalid branch name "B c" (lowercase letters, digits, _ and -)',
                "steps[0].parallel.branches.a: expected a non-empty array of steps",
            ],
        ),
        (
            {"id": "p", "parallel": {"branches": {"a": [{"id": "x", "set": {"v": 1}}]}, "join": "most"}},
            ['steps[0].parallel.join: expected "all", "any" or {"at_least": <n>} (got "most")'],
        ),
        (
            {
                "id": "p",
                "parallel": {"branches": {"a": [{"id": "x", "set": {"v": 1}}]}, "join": {"at_least": 2}},
            },
            ["steps[0].parallel.join.at_least: 2 cannot be reached with 1 branch(es)"],
        ),
        (
            {
                "id": "p",
                "parallel": {"branches": {"a": [{"id": "x", "set": {"v": 1}}]}, "join": {"at_least": 0.5}},
            },
            ["steps[0].parallel.join.at_least: expected a whole number of at least 1 (got 0.5)"],
        ),
        (
            {"id": "f", "for_each": {"items": "lines", "steps": [{"id": "x", "set": {"v": 1}}]}},
            [
                'steps[0].for_each.items: expected a template such as "{{trigger.payload.lines}}" or an array (got "lines")'
            ],
        ),
        (
            {"id": "f", "for_each": {"items": {"a": 1}, "steps": []}},
            [
                'steps[0].for_each.items: expected a template such as "{{trigger.payload.lines}}" or an array (got {"a": 1})',
                "steps[0].for_each.steps: expected a non-empty array of steps",
            ],
        ),
        (
            {
                "id": "f",
                "for_each": {
                    "items": [1],
                    "steps": [{"id": "x", "set": {"v": 1}}],
                    "concurrency": 0,
                    "on_item_error": "skip",
                },
            },
            [
                "steps[0].for_each.concurrency: ...",
                'steps[0].for_each.on_item_error: expected "fail", "continue" or "collect" (got "skip")',
            ],
        ),
        (
            {"id": "c", "call": {"workflow": "Not A Slug", "wait": "yes"}},
            [
                'steps[0].call.workflow: invalid slug "Not A Slug" (lowercase letters, digits and -)',
                "steps[0].call.wait: expected true or false",
            ],
        ),
        ({"id": "c", "call": {}}, ["steps[0].call.workflow: required key is missing"]),
    ],
)
def test_fan_out_steps_name_each_problem(conn: Conn, step: dict[str, Any], expected: list[str]) -> None:
    found = problems(conn, one(step))
    assert len(found) == len(expected), found
    for f, e in zip(found, expected, strict=True):
        assert f.startswith(e[:-3]) if e.endswith("...") else f == e


def test_nested_steps_are_checked_with_their_paths(conn: Conn) -> None:
    found = problems(
        conn,
        one(
            {
                "id": "p",
                "parallel": {
                    "branches": {
                        "a": [
                            {"id": "x", "set": {"v": "{{nope.y}}"}},
                            {
                                "id": "x2",
                                "if": {"field": "vars.v", "op": "equals", "value": 1},
                                "then": "start",
                                "else": None,
                            },
                        ],
                        "b": [{"id": "x", "set": {"v": 1}}, {"id": "island", "set": {"v": 2}, "next": None}],
                    }
                },
            },
            {"id": "start", "set": {"v": 0}},
        ),
    )
    assert found == [
        'steps[0].parallel.branches.a[0].set.v: unknown template root "nope" (expected one of trigger, steps, vars,'
        " execution, tenant, now)",
        'steps[0].parallel.branches.a[1].then: step "start" is in another step list (a route stays within its steps,'
        " branch or body)",
        'steps[0].parallel.branches.b[0].id: duplicate step id "x" (already used by steps[0].parallel.branches.a[0])',
    ]


def test_item_and_index_exist_only_inside_a_for_each_body(conn: Conn) -> None:
    body = [{"id": "use", "set": {"sku": "{{item.sku}}", "at": "{{index}}"}}]
    assert (
        problems(conn, one({"id": "f", "for_each": {"items": "{{trigger.payload.lines}}", "steps": body}}))
        == []
    )
    outside = problems(conn, one({"id": "use", "set": {"sku": "{{item.sku}}", "at": "{{index}}"}}))
    assert [p.split(":")[0] for p in outside] == ["steps[0].set.at", "steps[0].set.sku"] or len(outside) == 2
    # a parallel inside a for_each body still sees the item
    nested = one(
        {
            "id": "f",
            "for_each": {
                "items": [1, 2],
                "steps": [
                    {"id": "p", "parallel": {"branches": {"a": [{"id": "a1", "set": {"v": "{{item}}"}}]}}}
                ],
            },
        }
    )
    assert problems(conn, nested) == []


def test_fan_out_nesting_is_bounded(conn: Conn) -> None:
    inner: dict[str, Any] = {"id": "leaf", "set": {"v": 1}}
    for depth in range(4):
        inner = {"id": f"f{depth}", "for_each": {"items": [1], "steps": [inner]}}
    found = problems(conn, one(inner))
    assert found == [
        "steps[0].for_each.steps[0].for_each.steps[0].for_each.steps[0]: fan-out nested 4 deep, the limit is 3"
        " (setting conveyor.max_fanout_nesting)"
    ]


def test_steps_in_bodies_count_towards_the_step_limit(conn: Conn) -> None:
    conn.execute("set conveyor.max_workflow_steps = 5")
    body = [{"id": f"s{i}", "set": {"v": i}} for i in range(5)]
    found = problems(conn, one({"id": "f", "for_each": {"items": [1], "steps": body}}))
    assert found == [
        "steps: 6 steps in all step lists (branches and bodies included) exceed the limit 5"
        " (setting conveyor.max_workflow_steps)"
    ]


def test_a_call_to_an_unknown_slug_or_to_itself_is_refused_at_publish(conn: Conn, tenant: str) -> None:
    caller = doc(
        "caller",
        {"id": "c", "call": {"workflow": "callee"}},
        {"id": "me", "call": {"workflow": "caller"}},
        {"id": "dyn", "call": {"workflow": "{{trigger.payload.slug}}"}},
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        publish(conn, tenant, caller)
    assert refused.value.diag.message_detail == (
        'steps[0].call.workflow: tenant "acme" has no published workflow "callee"\n'
        'steps[1].call.workflow: workflow "caller" calls itself (a call may not start the workflow it is in)'
    )
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}
    publish(conn, tenant, doc("callee", {"id": "x", "set": {"v": 1}}))
    publish(conn, tenant, doc("caller", {"id": "c", "call": {"workflow": "callee"}}))
