"""A hostile tenant against one real runner: while tenant B attacks, tenant A is served.

Each attack is one the hardening issue found; for each, tenant A's event is dispatched
and its webhook performed by the runner within VICTIM_BOUND_S, and the attack itself ends
bounded (refused at publish, or failed with the limit named) instead of running on.
Dispatch serves events in the order they were committed, whoever's they are, so A's
event waits for the B events committed before it: what the limits bound is what each of
them costs (docs/limits.md, "A hostile tenant"). Documents: test_hostile_documents.py.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.e2e.hostile import VICTIM_BOUND_S, Platform
from tests.runner.helpers import wait_for

pytestmark = pytest.mark.slow

BURST_GROW = 10
BURST_HOARD = 3
BURST_REGEX = 200
BURST_REGEX_COSTLY = 40
BURST_MAP_HUGE = 2
BURST_MAP = 5


def one_step(slug: str, event: str, step: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "name": slug, "trigger": {"event": event}, "steps": [{"id": "s", **step}], **extra}


def test_a_fan_out_storm_stays_in_its_chain_budget_and_a_is_served(platform: Platform) -> None:
    # Guard: the chain budgets (conveyor.max_chain_events / max_chain_executions, sql/budgets.sql).
    platform.publish(
        "tb",
        {
            "slug": "storm",
            "name": "Storm",
            "trigger": {"event": "b.fan.go"},
            "steps": [{"id": "e", "emit": {"event": "b.fan.go"}, "next": "e"}],
            "settings": {"max_steps": 30},
        },
    )
    platform.emit("tb", "b.fan.go")
    time.sleep(0.5)  # the storm is under way

    assert platform.victim_latency() < VICTIM_BOUND_S

    # the storm ends by itself: its chain's budget (1,000 emitted events) is spent
    wait_for(
        lambda: (
            platform.count(
                "select count(*) from conveyor.events where tenant_id = 'tb' and dispatched_at is null"
            )
            == 0
            and platform.count(
                "select count(*) from conveyor.executions where tenant_id = 'tb' and status = 'running'"
            )
            == 0
        ),
        timeout=120,
    )
    assert platform.count("select count(*) from conveyor.events where tenant_id = 'tb'") <= 1001
    assert platform.count("select count(*) from conveyor.executions where tenant_id = 'tb'") <= 1001
    assert platform.victim_latency() < VICTIM_BOUND_S


# -- poison: values that grow --------------------------------------------------------------


def test_a_string_that_doubles_each_step_fails_at_the_render_limit_and_a_is_served(
    platform: Platform,
) -> None:
    # Guard: the size checks of render_string / render_planned (conveyor.max_rendered_bytes,
    # sql/templates.sql). Without them each execution doubles its string until jsonb's 256 MB
    # (or the 1,000-step budget), holding dispatch for minutes.
    platform.publish(
        "tb",
        {
            "slug": "grow",
            "name": "Grow",
            "trigger": {"event": "b.poison.grow"},
            "steps": [
                {"id": "seed", "set": {"s": "{{trigger.payload.s}}"}},
                {"id": "double", "set": {"s": "{{vars.s}}{{vars.s}}"}, "next": "double"},
            ],
        },
    )
    platform.burst("tb", "b.poison.grow", {"s": "x" * 1000}, n=BURST_GROW)
    assert platform.victim_latency() < VICTIM_BOUND_S

    for e in platform.final_executions("tb", BURST_GROW):
        assert e["status"] == "failed"
        assert e["error"]["step"] == "double"
        assert e["error"]["message"] == (
            'step "double".set.s: the rendered value is 2048000 bytes or more, over the limit of 1048576 bytes '
            "(setting conveyor.max_rendered_bytes)"
        )
        assert e["steps_run"] == 12  # the seed, ten doublings that fit, the eleventh that does not
    assert platform.victim_latency() < VICTIM_BOUND_S


def test_an_execution_that_hoards_state_fails_at_its_budget_and_a_is_served(platform: Platform) -> None:
    # Guard: the execution state budget checked before each step (conveyor.max_execution_state_bytes,
    # interpret_batch in sql/interpreter.sql). Each step keeps 1 MB twice (its output and a
    # variable); without the budget each execution would keep 18 MB and complete.
    steps = [{"id": f"k{i}", "set": {f"v{i}": "{{trigger.payload.s}}"}} for i in range(9)]
    platform.publish(
        "tb", {"slug": "hoard", "name": "Hoard", "trigger": {"event": "b.poison.hoard"}, "steps": steps}
    )
    platform.burst("tb", "b.poison.hoard", {"s": "y" * 1_000_000}, n=BURST_HOARD)
    assert platform.victim_latency() < VICTIM_BOUND_S

    for e in platform.final_executions("tb", BURST_HOARD):
        assert e["status"] == "failed"
        assert e["error"]["message"].startswith(
            f"execution state budget spent: the step outputs and variables of execution {e['execution_id']} take "
        )
        assert e["error"]["message"].endswith(
            'over the limit of 8388608 (setting conveyor.max_execution_state_bytes); stopped before step "k5"'
        )
        assert e["steps_run"] == 5  # five steps keep 10 MB
    assert platform.victim_latency() < VICTIM_BOUND_S


def test_an_action_timeout_over_the_maximum_never_reaches_a_runner(platform: Platform) -> None:
    # Guards: publish's duration checks (document_duration_error with conveyor.max_action_timeout,
    # sql/workflows.sql), and at run time interpret_batch's check of a stored step timeout
    # (sql/interpreter.sql). Without the latter, a version stored before the maximum existed
    # queues its action with timeout_s 315576000: the runner would hold the message invisible,
    # and a slot on a slow endpoint, for ten years.
    hook: dict[str, Any] = {"action": "webhook.send", "with": {"url": platform.server.url("/b")}}
    for step, problem in [
        (
            {**hook, "timeout": "100 years"},
            'steps[0].timeout: duration "100 years" exceeds the maximum 1 hour',
        ),
        (
            {**hook, "with": {**hook["with"], "timeout": "{{trigger.payload.t}}"}},
            'steps[0].with.timeout: invalid duration "{{trigger.payload.t}}"',  # a timeout is never rendered
        ),
    ]:
        assert platform.refusal("tb", one_step("slow", "b.slow.go", step)).startswith(problem)

    # a version stored before conveyor.max_action_timeout existed (written past the checks)
    platform.publish("tb", one_step("slow", "b.slow.go", hook))
    platform.conn.execute("set session_replication_role = replica")  # past workflow_steps' immutability
    platform.conn.execute(
        "update conveyor.workflow_steps set timeout = interval '10 years' where tenant_id = 'tb'"
    )
    platform.conn.execute("set session_replication_role = origin")
    platform.burst("tb", "b.slow.go", {}, n=20)
    assert platform.victim_latency() < VICTIM_BOUND_S

    executions = platform.final_executions("tb", 20)
    assert [e["status"] for e in executions] == ["failed"] * 20
    assert {e["error"]["message"] for e in executions} == {
        'step "s".timeout: duration "10 years" exceeds the maximum 1 hour (setting conveyor.max_action_timeout)'
    }
    assert (
        platform.count("select count(*) from pgmq.q_conveyor_actions where message ->> 'tenant_id' = 'tb'")
        == 0
    )
    assert platform.server.requests_to("/b") == []


# -- regular expressions -----------------------------------------------------------------

BACKREF = r"^(\w+)(\w+)\1\2$"  # backtracks: held a dispatch for 36 s on 5,000 characters
# the costliest pattern found within the size limit (991 states; docs/limits.md)
COSTLIEST = "[ab]*a(?:[ab]{15}){66}c"


def test_a_backtracking_pattern_is_refused_at_publish_and_when_a_template_renders_it(
    platform: Platform,
) -> None:
    # Guard: regex_refusal (sql/regex.sql): at publish for a literal pattern, and at run time
    # (regex_check in condition_compare) for one a template renders. Without the run-time
    # check each event of the burst holds dispatch for tens of seconds.
    def doc(pattern: str) -> dict[str, Any]:
        condition = {"field": "trigger.payload.text", "op": "matches", "value": pattern}
        return {
            "slug": "re",
            "name": "Regex",
            "trigger": {"event": "b.regex.go", "condition": condition},
            "steps": [{"id": "s", "set": {"matched": True}}],
        }

    assert "back-references (\\1 .. \\9) are not allowed" in platform.refusal("tb", doc(BACKREF))
    platform.publish("tb", doc("{{trigger.payload.re}}"))
    platform.burst("tb", "b.regex.go", {"text": "ab" * 2500, "re": BACKREF}, n=BURST_REGEX)
    assert platform.victim_latency() < VICTIM_BOUND_S

    wait_for(lambda: platform.count("select count(*) from conveyor.events where dispatched_at is null") == 0)
    assert platform.count("select count(*) from conveyor.executions where tenant_id = 'tb'") == 0
    refusals = platform.conn.execute(
        "select details ->> 'reason' as reason, details ->> 'error' as error from conveyor.execution_logs"
        " where tenant_id = 'tb'"
    ).fetchall()
    assert len(refusals) == BURST_REGEX
    assert {r["reason"] for r in refusals} == {"condition_error"}
    assert {r["error"] for r in refusals} == {
        'condition.value: regular expression "^(\\\\w+)(\\\\w+)\\\\1\\\\2$" refused: back-references (\\1 .. \\9)'
        " are not allowed: they can take time exponential in the text"
    }


def test_the_costliest_patterns_allowed_on_the_longest_text_allowed_are_bounded(platform: Platform) -> None:
    # Guards: the pattern's expanded size and the text's length (conveyor.max_regex_pattern,
    # conveyor.max_regex_subject; regex_refusal and condition_compare in sql/regex.sql and
    # sql/conditions.sql). Within both, a match is one pass of an automaton of at most 1,000
    # states over at most 10,000 characters. The patterns come from the events, each one
    # different, so that none is compiled only once (PostgreSQL caches 32 compiled patterns).
    def doc(pattern: str) -> dict[str, Any]:
        return one_step(
            "re", "b.regex.go", {"if": {"field": "trigger.payload.text", "op": "matches", "value": pattern}}
        )

    assert "the pattern expands to 1023 states" in platform.refusal(
        "tb", doc("[ab]*a" + "[ab]{255}" * 4 + "c")
    )
    platform.publish("tb", doc("{{trigger.payload.re}}"))
    text = "".join(random.Random(14).choice("ab") for _ in range(10_000))
    # 851 to 991 states each, all different
    patterns = [f"[ab]*a(?:[ab]{{{15 - i % 2}}}){{{66 - i // 2}}}c" for i in range(BURST_REGEX_COSTLY)]
    with platform.conn.transaction():
        for pattern in patterns:
            platform.emit("tb", "b.regex.go", {"text": text, "re": pattern})
    platform.burst("tb", "b.regex.go", {"text": text + "a", "re": COSTLIEST}, n=BURST_REGEX_COSTLY)
    assert platform.victim_latency() < VICTIM_BOUND_S

    executions = platform.final_executions("tb", 2 * BURST_REGEX_COSTLY)
    assert [e["status"] for e in executions] == ["completed"] * BURST_REGEX_COSTLY + [
        "failed"
    ] * BURST_REGEX_COSTLY
    assert {e["step_outputs"]["s"]["output"]["result"] for e in executions[:BURST_REGEX_COSTLY]} == {False}
    assert executions[-1]["error"]["message"] == (
        'condition.field "trigger.payload.text": operator "matches": the text is 10001 characters,'
        " over the limit of 10000 (setting conveyor.max_regex_subject)"
    )


# -- transforms --------------------------------------------------------------------------


def test_a_map_past_the_item_limit_fails_and_one_at_the_limit_runs_in_linear_time(platform: Platform) -> None:
    # Guards: the item limit (conveyor.max_transform_items, transform_value in sql/interpreter.sql)
    # and the map's linear evaluation (each item as the `item` root, not a copy of the context):
    # 100,000 items took 290 s when each copied the context, 3.4 s now without the limit.
    # (Items of one character, so that the list is within conveyor.max_rendered_bytes, which
    # a source is rendered under: 100,000 numbers or {"sku": ...} objects meet that limit first.)
    platform.publish(
        "tb",
        one_step(
            "bulk",
            "b.map.go",
            {"transform": {"op": "map", "source": "{{trigger.payload.items}}", "template": "n{{item}}"}},
        ),
    )
    platform.burst("tb", "b.map.go", {"items": [str(i % 10) for i in range(100_000)]}, n=BURST_MAP_HUGE)
    platform.burst("tb", "b.map.go", {"items": [str(i % 10) for i in range(10_000)]}, n=BURST_MAP)
    assert platform.victim_latency() < VICTIM_BOUND_S

    executions = platform.final_executions("tb", BURST_MAP_HUGE + BURST_MAP)
    assert [e["status"] for e in executions] == ["failed"] * BURST_MAP_HUGE + ["completed"] * BURST_MAP
    assert executions[0]["error"]["message"] == (
        'step "s".transform.source: map has 100000 items, over the limit of 10000 (setting conveyor.max_transform_items)'
    )
    assert executions[-1]["step_outputs"]["s"]["output"]["value"][9_998:] == ["n8", "n9"]
