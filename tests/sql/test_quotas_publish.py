"""Quotas at publish and activation: every count and every per-document limit at its
boundary (the limit passes, one more is refused with the named error, nothing changed)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.plan_helpers import document, plan_tenant, publish, refused, refused_publish, sets, snapshot

Conn = psycopg.Connection[dict[str, Any]]

IF_STEP = {"id": "check", "if": {"field": "trigger.payload.x", "op": "is_null"}, "then": "s0"}
SWITCH_STEP = {
    "id": "route",
    "switch": [{"when": {"field": "trigger.payload.x", "op": "equals", "value": 1}, "goto": "s0"}],
    "default": "s0",
}
SCHEDULE = {"schedule": {"cron": "0 9 * * *"}}
WEBHOOK = {"webhook": {"methods": ["POST"]}}


def test_the_third_active_workflow_of_a_free_tenant_passes_and_the_fourth_is_refused(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    for slug in ("one", "two", "three"):
        publish(conn, t, document(slug))
    before = snapshot(conn, t)
    message = refused_publish(conn, t, document("four"))
    assert message == (
        'quota workflows of plan "free" exceeded: tenant "acme" has 3 active workflows, the limit is 3 '
        '(workflow "four" would be one more)'
    )
    assert snapshot(conn, t) == before


def test_at_the_workflow_limit_a_tenant_still_edits_and_publishes_inactive_workflows(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    for slug in ("one", "two", "three"):
        publish(conn, t, document(slug))
    assert publish(conn, t, document("one", *sets(2))) == 2
    inactive = document("draft") | {"active": False}
    assert publish(conn, t, inactive) == 1
    message = refused(conn, "select conveyor.set_workflow_active('acme', 'draft', true)")
    assert message.startswith('quota workflows of plan "free" exceeded: tenant "acme" has 3 active workflows')
    assert conn.execute("select active from conveyor.workflows where slug = 'draft'").fetchone() == {
        "active": False
    }
    conn.execute("select conveyor.set_workflow_active('acme', 'one', false)")
    assert conn.execute("select conveyor.set_workflow_active('acme', 'draft', true) as c").fetchone() == {
        "c": True
    }


def test_two_tenants_count_their_own_workflows(conn: Conn) -> None:
    a = plan_tenant(conn, "acme", "free")
    b = plan_tenant(conn, "globex", "free")
    for slug in ("one", "two", "three"):
        publish(conn, a, document(slug))
    assert publish(conn, b, document("one")) == 1


@pytest.mark.parametrize(("plan", "limit"), [("free", 5), ("pro", 25)])
def test_steps_per_workflow_at_the_limit_pass_and_one_more_is_refused(
    conn: Conn, plan: str, limit: int
) -> None:
    t = plan_tenant(conn, "acme", plan)
    assert publish(conn, t, document("at-limit", *sets(limit))) == 1
    before = snapshot(conn, t)
    message = refused_publish(conn, t, document("at-limit", *sets(limit + 1)))
    assert message == (
        f'quota steps_per_workflow of plan "{plan}" exceeded: workflow "at-limit" has {limit + 1} steps, '
        f"the limit is {limit}"
    )
    assert snapshot(conn, t) == before


@pytest.mark.parametrize(
    ("step", "waits"),
    [
        ({"id": "s0", "delay": {"for": "61m"}}, "1 hour 1 minute"),
        ({"id": "s0", "wait_for_event": {"event": "email.message.replied", "timeout": "2h"}}, "2 hours"),
    ],
)
def test_a_delay_or_wait_longer_than_the_plan_allows_is_refused(
    conn: Conn, step: dict[str, Any], waits: str
) -> None:
    t = plan_tenant(conn, "acme", "free")
    assert publish(conn, t, document("waits", {"id": "s0", "delay": {"for": "1h"}})) == 1
    before = snapshot(conn, t)
    message = refused_publish(conn, t, document("waits", step))
    kind = next(k for k in ("delay", "wait_for_event") if k in step)
    assert message == (
        f'quota longest_delay of plan "free" exceeded: workflow "waits" steps[0] ("s0", {kind}) waits {waits}, '
        "the limit is 1 hour"
    )
    assert snapshot(conn, t) == before


def test_a_delay_until_a_fixed_time_counts_from_now(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "pro")
    soon = conn.execute(
        "select to_char(now() + interval '6 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') as t"
    ).fetchone()
    late = conn.execute(
        "select to_char(now() + interval '8 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') as t"
    ).fetchone()
    assert soon is not None and late is not None
    assert publish(conn, t, document("until", {"id": "s0", "delay": {"until": soon["t"]}})) == 1
    message = refused_publish(conn, t, document("until", {"id": "s0", "delay": {"until": late["t"]}}))
    assert message.startswith(
        'quota longest_delay of plan "pro" exceeded: workflow "until" steps[0] ("s0", delay)'
    )
    assert message.endswith("the limit is 7 days")


@pytest.mark.parametrize("step", [IF_STEP, SWITCH_STEP], ids=["condition", "switch"])
def test_conditional_branches_are_refused_on_free_and_allowed_on_pro(
    conn: Conn, step: dict[str, Any]
) -> None:
    free = plan_tenant(conn, "acme", "free")
    pro = plan_tenant(conn, "globex", "pro")
    kind = "condition" if "if" in step else "switch"
    message = refused_publish(conn, free, document("branches", {"id": "s0", "set": {"a": 1}}, step))
    assert message == (
        f'quota conditional_branches of plan "free" exceeded: workflow "branches" steps[1] ("{step["id"]}") '
        f"is a {kind} step, the plan allows none"
    )
    assert snapshot(conn, free)["workflows"] is None
    assert publish(conn, pro, document("branches", {"id": "s0", "set": {"a": 1}}, step)) == 1


def test_parallel_execution_is_refused_by_name_on_pro_and_allowed_on_enterprise(conn: Conn) -> None:
    """The parallel kinds (parallel, for_each, call) are refused by their compiled names: a
    version with such a step (written directly, whichever kinds are installed) cannot be
    activated on pro; on enterprise it can."""
    conn.execute("alter table conveyor.workflow_steps drop constraint workflow_steps_kind_check")
    conn.execute("set session_replication_role = replica")  # published steps are immutable: a test-only edit
    for tenant_id, plan in (("acme", "pro"), ("globex", "enterprise")):
        t = plan_tenant(conn, tenant_id, plan)
        publish(conn, t, document("fan", *sets(1)) | {"active": False})
        conn.execute(
            "update conveyor.workflow_steps set kind = 'for_each' where tenant_id = %s and step_id = 's0'",
            (t,),
        )
    conn.execute("set session_replication_role = origin")
    message = refused(conn, "select conveyor.set_workflow_active('acme', 'fan', true)")
    assert message == (
        'quota parallel_execution of plan "pro" exceeded: workflow "fan" steps[0] ("s0") is a for_each step, '
        "the plan allows none"
    )
    assert conn.execute("select conveyor.set_workflow_active('globex', 'fan', true) as c").fetchone() == {
        "c": True
    }


def test_scheduled_workflows_free_allows_none_pro_allows_five(conn: Conn) -> None:
    free = plan_tenant(conn, "acme", "free")
    message = refused_publish(conn, free, document("cron", trigger=SCHEDULE))
    assert message == (
        'quota scheduled_workflows of plan "free" exceeded: tenant "acme" has 0 active scheduled workflows, '
        'the limit is 0 (workflow "cron" would be one more)'
    )
    assert snapshot(conn, free)["schedules"] == 0
    pro = plan_tenant(conn, "globex", "pro")
    for i in range(5):
        publish(conn, pro, document(f"cron-{i}", trigger=SCHEDULE))
    before = snapshot(conn, pro)
    message = refused_publish(conn, pro, document("cron-5", trigger=SCHEDULE))
    assert message.startswith(
        'quota scheduled_workflows of plan "pro" exceeded: tenant "globex" has 5 active scheduled workflows, '
        "the limit is 5"
    )
    assert snapshot(conn, pro) == before
    # an event-triggered workflow turned scheduled counts as one more
    publish(conn, pro, document("events"))
    assert refused_publish(conn, pro, document("events", trigger=SCHEDULE)).startswith(
        "quota scheduled_workflows"
    )


def test_webhook_endpoints_at_the_limit_pass_and_one_more_is_refused(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    publish(conn, t, document("hook", trigger=WEBHOOK))
    assert publish(conn, t, document("hook", *sets(2), trigger=WEBHOOK)) == 2  # its endpoint is kept
    before = snapshot(conn, t)
    message = refused_publish(conn, t, document("hook-2", trigger=WEBHOOK))
    assert message == (
        'quota webhook_endpoints of plan "free" exceeded: tenant "acme" has 1 webhook endpoints, the limit is 1 '
        '(workflow "hook-2" would add one)'
    )
    assert snapshot(conn, t) == before


def test_every_problem_is_listed_in_the_detail(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as caught:
        conn.execute(
            "select * from conveyor.publish(%s, %s)",
            (t, Jsonb(document("big", *sets(5), {"id": "w", "delay": {"for": "2h"}}, IF_STEP))),
        )
    detail = str(caught.value.diag.message_detail).split("\n")
    assert [line.split(" exceeded")[0] for line in detail] == [
        'quota steps_per_workflow of plan "free"',
        'quota longest_delay of plan "free"',
        'quota conditional_branches of plan "free"',
    ]
    assert 'Tenant "acme" is on plan "free"' in str(caught.value.diag.message_hint)


def test_a_tenant_moved_to_a_smaller_plan_keeps_what_it_has_and_may_edit_it(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "pro")
    for slug in ("one", "two", "three", "four"):
        publish(conn, t, document(slug))
    conn.execute("select conveyor.set_tenant_plan('acme', 'free')")
    assert publish(conn, t, document("four", *sets(3))) == 2
    assert refused_publish(conn, t, document("five")).startswith(
        'quota workflows of plan "free" exceeded: tenant "acme" has 4 active workflows, the limit is 3'
    )


def test_the_standard_plan_limits_nothing(conn: Conn) -> None:
    conn.execute("select conveyor.create_tenant('acme', 'Acme')")
    assert conn.execute("select plan from conveyor.tenants").fetchone() == {"plan": "standard"}
    for i in range(30):
        publish(conn, "acme", document(f"w{i}", *sets(1), trigger=SCHEDULE if i % 2 else WEBHOOK))
    assert (
        publish(conn, "acme", document("long", *sets(40), {"id": "w", "delay": {"for": "365d"}}, IF_STEP))
        == 1
    )


def test_installed_split_and_for_each_documents_meet_their_plan_flags(conn: Conn) -> None:
    """The kinds as the engine compiles them: a split is a conditional branch (refused on
    free, allowed on pro), a for_each is parallel execution (refused on pro, allowed on
    enterprise)."""
    split = {"id": "ab", "split": [{"weight": 50, "goto": "s0"}, {"weight": 50, "goto": None}]}
    each = {"id": "each", "for_each": {"items": [1, 2], "steps": [{"id": "inner", "set": {"x": 1}}]}}
    free = plan_tenant(conn, "free-t", "free")
    pro = plan_tenant(conn, "pro-t", "pro")
    ent = plan_tenant(conn, "ent-t", "enterprise")
    assert refused_publish(conn, free, document("ab", split, *sets(1))).startswith(
        'quota conditional_branches of plan "free" exceeded: workflow "ab" steps[0] ("ab") is a split step'
    )
    assert publish(conn, pro, document("ab", split, *sets(1))) == 1
    assert refused_publish(conn, pro, document("each", each, *sets(1))).startswith(
        'quota parallel_execution of plan "pro" exceeded: workflow "each" steps[0] ("each") is a for_each step'
    )
    assert publish(conn, ent, document("each", each, *sets(1))) == 1
