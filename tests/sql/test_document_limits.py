"""Bounds on workflow documents (sql/document_limits.sql, checked first by
conveyor.validate_workflow): size, number of steps, nesting depth, string length; each
refusal names the limit, the value and the path, and a refused publish stores nothing.
Validation and publishing stay linear in the number of steps (sql/workflows.sql)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import execution, install, make_tenant, queued_messages, start, step_runs

Conn = psycopg.Connection[dict[str, Any]]


def problems(conn: Conn, document: Any) -> list[str]:
    """The problems of a document, given as a value or (too deep for json.dumps) as JSON text."""
    value = document if isinstance(document, str) else Jsonb(document)
    rows = conn.execute("select m from conveyor.validate_workflow(%s::jsonb) as m", (value,)).fetchall()
    return [str(r["m"]) for r in rows]


def workflow(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "slug": "limits",
        "name": "Limits",
        "trigger": {"event": "crm.contact.created"},
        "steps": steps,
        **extra,
    }


def nested_not(levels: int) -> dict[str, Any]:
    """A condition of `levels` nested "not"s around one leaf: levels + 1 objects."""
    condition: dict[str, Any] = {"field": "trigger.payload.x", "op": "is_null"}
    for _ in range(levels):
        condition = {"not": condition}
    return condition


def deep_if(levels: int) -> str:
    """JSON text: document (1) > steps (2) > step (3) > the condition's levels + 1 objects."""
    leaf = json.dumps(nested_not(0))
    condition = '{"not": ' * levels + leaf + "}" * levels
    head = json.dumps(workflow([{"id": "check", "if": None}]))
    return head.replace('"if": null', '"if": ' + condition)


def many_steps(n: int, text_bytes: int = 0) -> dict[str, Any]:
    """n steps of every common kind, each referring to the one before it."""
    steps: list[dict[str, Any]] = []
    for i in range(n):
        previous = f"s{max(i - 1, 0)}"
        following = f"s{i + 1}" if i + 1 < n else None
        match i % 4:
            case 0:
                steps.append(
                    {"id": f"s{i}", "set": {"v": f"{{{{steps.{previous}.output}}}}", "pad": "x" * text_bytes}}
                )
            case 1:
                condition = {
                    "all": [
                        {"field": "vars.v", "op": "equals", "value": "x"},
                        {"field": f"steps.{previous}.output.ok", "op": "is_null"},
                    ]
                }
                steps.append({"id": f"s{i}", "if": condition, "then": following})
            case 2:
                steps.append(
                    {
                        "id": f"s{i}",
                        "action": "webhook.send",
                        "with": {
                            "url": "https://example.com/{{vars.v}}",
                            "body": {"a": f"{{{{steps.{previous}}}}}"},
                        },
                        "on_error": {"goto": following or f"s{i}"},
                    }
                )
            case _:
                steps.append({"id": f"s{i}", "delay": {"for": "5m"}})
    return workflow(steps)


def stored_versions(conn: Conn) -> int:
    row = conn.execute("select count(*) as n from conveyor.workflow_versions").fetchone()
    assert row is not None
    return int(row["n"])


# ---------------------------------------------------------------------------------------
# size


def test_a_document_over_the_size_limit_is_refused_before_anything_else(conn: Conn) -> None:
    document = workflow([{"id": "a", "stop": {}}], description="x" * 5_000_000)
    size = len(conn.execute("select %s::jsonb::text as t", (Jsonb(document),)).fetchone()["t"])  # type: ignore[index]
    assert problems(conn, document) == [
        f"(document): size {size} bytes exceeds the limit 262144 (setting conveyor.max_document_bytes)"
    ]


def test_the_size_limit_is_a_setting(conn: Conn) -> None:
    document = workflow([{"id": "a", "stop": {}}], description="x" * 1000)
    conn.execute("set conveyor.max_document_bytes = 500")
    assert problems(conn, document)[0].startswith("(document): size ")
    conn.execute("set conveyor.max_document_bytes = 5000")
    assert problems(conn, document) == []


def test_a_refused_publish_stores_nothing_and_keeps_the_current_version(conn: Conn, tenant: str) -> None:
    good = workflow([{"id": "a", "stop": {}}])
    conn.execute("select * from conveyor.publish(%s, %s)", (tenant, Jsonb(good)))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        conn.execute(
            "select * from conveyor.publish(%s, %s)", (tenant, Jsonb({**good, "description": "y" * 300_000}))
        )
    assert "1 problem(s): (document): size " in str(raised.value)
    conn.rollback()
    assert stored_versions(conn) == 1
    exported = conn.execute("select conveyor.export_workflow(%s, 'limits') as d", (tenant,)).fetchone()
    assert exported is not None and "description" not in exported["d"]


# ---------------------------------------------------------------------------------------
# steps


def test_more_steps_than_the_limit_are_refused_and_the_limit_is_a_setting(conn: Conn) -> None:
    document = workflow([{"id": f"s{i}", "set": {"v": i}} for i in range(501)])
    assert problems(conn, document) == [
        "steps: 501 steps exceed the limit 500 (setting conveyor.max_workflow_steps)"
    ]
    assert problems(conn, {**document, "steps": document["steps"][:500]}) == []
    conn.execute("set conveyor.max_workflow_steps = 501")
    assert problems(conn, document) == []


# ---------------------------------------------------------------------------------------
# depth


def test_a_value_nested_past_the_depth_limit_is_refused_with_its_path(conn: Conn) -> None:
    assert problems(conn, deep_if(28)) == []  # depth 32: the limit
    assert problems(conn, deep_if(29)) == [
        "steps[0].if"
        + ".not" * 29
        + ": nesting depth 33 exceeds the limit 32 (setting conveyor.max_document_depth)"
    ]
    conn.execute("set conveyor.max_document_depth = 33")
    assert problems(conn, deep_if(29)) == []


@pytest.mark.parametrize("levels", [500, 625, 700, 3000])
def test_deep_conditions_never_reach_the_stack_depth_limit(conn: Conn, levels: int) -> None:
    # Before the limit: depth 500 validated, ~625 published a condition that failed every
    # execution with 54001 (stack depth), ~700 failed validation with 54001 and no path.
    found = problems(conn, deep_if(levels))
    assert found == [
        "steps[0].if"
        + ".not" * 29
        + ": nesting depth 33 exceeds the limit 32 (setting conveyor.max_document_depth)"
    ]


def test_deep_arrays_anywhere_in_the_document_are_refused(conn: Conn) -> None:
    step = {"id": "hook", "action": "webhook.send", "with": {"url": "https://example.com", "body": None}}
    document = json.dumps(workflow([step])).replace(
        '"body": null', '"body": ' + "[" * 2000 + "1" + "]" * 2000
    )
    assert problems(conn, document) == [
        "steps[0].with.body"
        + "[0]" * 28
        + ": nesting depth 33 exceeds the limit 32 (setting conveyor.max_document_depth)"
    ]


def test_a_too_deep_document_is_not_published(conn: Conn, tenant: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="nesting depth 33 exceeds the limit 32"):
        conn.execute("select * from conveyor.publish(%s, %s::jsonb)", (tenant, deep_if(700)))
    conn.rollback()
    assert stored_versions(conn) == 0


# ---------------------------------------------------------------------------------------
# strings


def test_a_long_string_or_key_is_refused_with_its_path(conn: Conn) -> None:
    long_text = "x" * 70_000
    document = workflow(
        [
            {"id": "mail", "action": "slack.send", "with": {"text": long_text}},
            {"id": "vars", "set": {"a" * 66_000: 1}},
        ]
    )
    assert problems(conn, document) == [
        "steps[0].with.text: string of 70000 characters exceeds the limit 65536 (setting conveyor.max_document_string)",
        "steps[1].set." + "a" * 61 + "...: key of 66000 characters exceeds the limit 65536 "
        "(setting conveyor.max_document_string)",
    ]
    conn.execute("set conveyor.max_document_string = 70000")
    assert not any("exceeds the limit" in p for p in problems(conn, document))


# ---------------------------------------------------------------------------------------
# time: the largest document allowed, and linearity


def test_the_largest_allowed_document_validates_and_publishes_quickly(conn: Conn, tenant: str) -> None:
    document = many_steps(500, text_bytes=1600)
    size = len(conn.execute("select %s::jsonb::text as t", (Jsonb(document),)).fetchone()["t"])  # type: ignore[index]
    assert 200_000 < size <= 262_144
    started = time.perf_counter()
    assert problems(conn, document) == []
    conn.execute("select * from conveyor.publish(%s, %s)", (tenant, Jsonb(document)))
    assert time.perf_counter() - started < 10
    row = conn.execute("select count(*) as n from conveyor.workflow_steps").fetchone()
    assert row is not None and row["n"] == 500


def test_validation_time_per_step_is_flat(conn: Conn) -> None:
    # Measured (scratch script, best of 2, before -> after): 500 / 2,000 / 4,000 steps took
    # 2.3 / 4.5 / 8.3 ms per step before, 1.4 / 1.6 / 1.4 ms per step after. A quadratic
    # validator spends about twice as long per step at 1,500 steps as at 250 (2.2x measured).
    conn.execute("set conveyor.max_workflow_steps = 1500")
    conn.execute("set conveyor.max_document_bytes = 1000000")

    def per_step(n: int) -> float:
        document = Jsonb(many_steps(n))
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            conn.execute("select conveyor.validate_workflow(%s)", (document,)).fetchall()
            best = min(best, time.perf_counter() - started)
        return best / n

    small, large = per_step(250), per_step(1500)
    assert large < 1.6 * small, f"{small * 1000:.2f} ms/step at 250 steps, {large * 1000:.2f} at 1,500"


# ---------------------------------------------------------------------------------------
# durations and timestamps


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (
            {"id": "a", "delay": {"for": "100 years"}},
            'steps[0].delay.for: duration "100 years" exceeds the maximum 1 year (setting conveyor.max_duration)',
        ),
        (
            {"id": "a", "delay": {"until": "294276-12-31"}},
            'steps[0].delay.until: timestamp "294276-12-31" is more than the maximum 1 year ahead '
            "(setting conveyor.max_duration)",
        ),
        (
            {"id": "a", "delay": {"until": "infinity"}},
            'steps[0].delay.until: timestamp "infinity" is out of range (from 1970-01-01 to 1 year ahead)',
        ),
        (
            {"id": "a", "wait_for_event": {"event": "crm.deal.won", "timeout": "2 years"}},
            'steps[0].wait_for_event.timeout: duration "2 years" exceeds the maximum 1 year '
            "(setting conveyor.max_duration)",
        ),
        (
            {"id": "a", "action": "slack.send", "with": {"text": "hi"}, "timeout": "100 years"},
            'steps[0].timeout: duration "100 years" exceeds the maximum 1 hour (setting conveyor.max_action_timeout)',
        ),
        (
            {"id": "a", "action": "webhook.send", "with": {"url": "https://example.com", "timeout": "2h"}},
            'steps[0].with.timeout: duration "2h" exceeds the maximum 1 hour (setting conveyor.max_action_timeout)',
        ),
        (
            {
                "id": "a",
                "action": "slack.send",
                "with": {"text": "hi"},
                "retry": {"attempts": 3, "max": "999999999y"},
            },
            'steps[0].retry.max: duration "999999999y" exceeds the maximum 1 year (setting conveyor.max_duration)',
        ),
    ],
)
def test_durations_and_timestamps_out_of_range_are_refused_with_their_path(
    conn: Conn, step: dict[str, Any], problem: str
) -> None:
    assert problems(conn, workflow([step])) == [problem]


def test_an_execution_timeout_over_the_maximum_is_refused(conn: Conn) -> None:
    document = workflow([{"id": "a", "stop": {}}], settings={"timeout": "400 days"})
    assert problems(conn, document) == [
        'settings.timeout: duration "400 days" exceeds the maximum 1 year (setting conveyor.max_duration)'
    ]
    assert problems(conn, {**document, "settings": {"timeout": "365 days"}}) == []


def test_the_duration_maxima_are_settings(conn: Conn) -> None:
    document = workflow(
        [
            {"id": "a", "action": "slack.send", "with": {"text": "hi"}, "timeout": "2h"},
            {"id": "b", "delay": {"for": "2 years"}},
        ]
    )
    conn.execute("set conveyor.max_action_timeout = '3 hours'")
    conn.execute("set conveyor.max_duration = '3 years'")
    assert problems(conn, document) == []


def test_a_stored_delay_past_the_maximum_fails_its_step_at_run_time(conn: Conn) -> None:
    # A version stored before the maximum existed (install compiles without validating):
    # the interpreter's parse refuses the duration, and only this execution's step fails.
    tenant = make_tenant(conn)
    version = install(conn, tenant, {"slug": "old", "steps": [{"id": "wait", "delay": {"for": "100 years"}}]})
    eid = start(conn, tenant, version)
    assert execution(conn, eid)["status"] == "failed"
    assert 'duration "100 years" exceeds the maximum 1 year' in str(step_runs(conn, eid)[0]["error"])


def test_a_stored_action_timeout_past_the_maximum_fails_its_step_and_queues_nothing(conn: Conn) -> None:
    # A step's timeout is compiled at publish, never parsed again: the interpreter checks a
    # stored one (from before conveyor.max_action_timeout) before queueing its action, which
    # would otherwise stay invisible in the queue, and hold a runner's slot, that long.
    tenant = make_tenant(conn)
    hook = {"id": "hook", "action": "webhook.send", "with": {"url": "https://example.com/h"}}
    version = install(conn, tenant, {"slug": "old", "steps": [hook]})
    conn.execute("set session_replication_role = replica")  # past workflow_steps' immutability
    conn.execute("update conveyor.workflow_steps set timeout = interval '10 years'")
    conn.execute("set session_replication_role = origin")
    e = execution(conn, start(conn, tenant, version))
    assert e["status"] == "failed"
    assert e["error"]["message"] == (
        'step "hook".timeout: duration "10 years" exceeds the maximum 1 hour (setting conveyor.max_action_timeout)'
    )
    assert queued_messages(conn) == []

    conn.execute("set conveyor.max_action_timeout = '20 years'")  # the maximum is the setting's
    e = execution(conn, start(conn, tenant, version))
    assert e["status"] == "waiting"
    assert [m["message"]["timeout_s"] for m in queued_messages(conn)] == [315_576_000]
