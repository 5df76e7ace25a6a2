"""Workflow documents: validation with paths, publishing immutable versions, the compiled
step graph, subscriptions, activation, export and deletion (sql/workflows.sql)."""

from __future__ import annotations

import copy
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.sql.tenant_context import acting_for, mint_token

Conn = psycopg.Connection[dict[str, Any]]


# ---------------------------------------------------------------------------------------
# helpers


def make_tenant(conn: Conn, tenant_id: str) -> None:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values (%s, %s)", (tenant_id, tenant_id.title())
    )


def problems(conn: Conn, document: Any) -> list[str]:
    rows = conn.execute("select m from conveyor.validate_workflow(%s) as m", (Jsonb(document),)).fetchall()
    return [str(r["m"]) for r in rows]


def matches(found: list[str], expected: list[str]) -> bool:
    """Exact messages, except that an expected message ending in "..." is a prefix: the
    wording after the path and the offending text belongs to the pure functions' owner
    (conveyor.template_errors, condition_errors, filter_errors), not to this file."""
    return len(found) == len(expected) and all(
        f.startswith(e[:-3]) if e.endswith("...") else f == e for f, e in zip(found, expected, strict=True)
    )


def publish(conn: Conn, tenant_id: str, document: dict[str, Any]) -> tuple[int, int]:
    row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))).fetchone()
    assert row is not None
    return int(row["workflow_id"]), int(row["version"])


def lead_document() -> dict[str, Any]:
    """The new-lead follow-up workflow of docs/workflow-format.md."""
    return {
        "slug": "new-lead-follow-up",
        "name": "New lead follow-up",
        "description": "Welcome new leads, then nudge sales if they have not replied.",
        "category": "sales",
        "tags": ["crm", "onboarding"],
        "trigger": {"event": "crm.contact.created", "filter": {"payload.new.type": "lead"}},
        "settings": {"run_once_per_entity": True, "max_executions_per_hour": 500, "timeout": "7d"},
        "steps": [
            {
                "id": "welcome",
                "action": "email.send",
                "connection": "smtp-main",
                "with": {
                    "to": "{{trigger.payload.new.email}}",
                    "subject": "Welcome, {{trigger.payload.new.first_name | default: 'there'}}",
                    "text": "Thanks for your interest in {{tenant.name}}.",
                },
                "retry": {"attempts": 5, "backoff": "exponential", "initial": "30s", "max": "1h"},
            },
            {
                "id": "wait",
                "delay": {
                    "for": "1d",
                    "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00"},
                },
            },
            {
                "id": "replied",
                "if": {"field": "trigger.payload.new.last_reply_at", "op": "is_null"},
                "then": "notify",
                "else": "done",
            },
            {
                "id": "notify",
                "action": "slack.send",
                "with": {
                    "text": "Call {{trigger.payload.new.first_name}} ({{steps.welcome.output.message_id}})"
                },
                "on_error": "continue",
            },
            {"id": "done", "stop": {"reason": "replied already"}},
        ],
    }


def with_steps(*steps: dict[str, Any]) -> dict[str, Any]:
    document = lead_document()
    document["steps"] = list(steps)
    return document


def slack(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "slack.send", "with": {"text": "hello"}, **extra}


# ---------------------------------------------------------------------------------------
# validation


def test_the_documented_example_is_valid(conn: Conn) -> None:
    assert problems(conn, lead_document()) == []


def test_a_document_that_is_not_an_object_is_refused(conn: Conn) -> None:
    assert problems(conn, ["steps"]) == ["(document): expected a JSON object"]


def test_missing_and_extra_keys_are_reported_at_every_level_in_document_order(conn: Conn) -> None:
    document = lead_document()
    del document["name"]
    document["colour"] = "blue"
    document["settings"]["speed"] = "fast"
    document["steps"][0]["with"]["colour"] = "red"
    del document["steps"][0]["with"]["to"]
    document["steps"][3]["priority"] = 1
    document["steps"][4]["stop"]["why"] = "x"
    assert problems(conn, document) == [
        "name: required key is missing",
        "colour: unknown key (expected one of: slug, name, trigger, steps, description, category, tags, active,"
        " settings)",
        "settings.speed: unknown key (expected one of: run_once_per_entity, max_executions_per_hour,"
        " max_concurrent, timeout, retry, on_error, max_steps)",
        "steps[0].with.to: required key is missing",
        "steps[0].with.colour: unknown key (expected one of: to, subject, text, html, cc, bcc, from_name, reply_to)",
        'steps[3].priority: unknown key for a "action" step (expected one of: id, action, on_error, connection,'
        " with, next, retry, timeout)",
        "steps[4].stop.why: unknown key (expected one of: reason, status)",
    ]


def test_step_kinds_and_action_types_must_be_known(conn: Conn) -> None:
    document = with_steps(
        {"id": "a", "action": "fax.send", "with": {}},
        {"id": "b", "loop": {"over": "x"}},
        {"id": "c", "set": {"x": 1}, "stop": {}},
        {"id": "d", "data": {"op": "merge", "entity": "deal"}},
        {"id": "e", "transform": {"op": "pivot"}},
    )
    assert problems(conn, document) == [
        'steps[0].action: unknown action type "fax.send" (expected one of: email.send, webhook.send, slack.send,'
        " discord.send, sms.send)",
        "steps[1]: missing the step kind (one of: action, if, switch, set, transform, stop, emit, data, delay,"
        " wait_for_event, wait_until)",
        "steps[2]: a step has exactly one kind, this one has set, stop",
        'steps[3].data.op: unknown data operation "merge" (expected one of: lookup, create, update, delete,'
        " add_tag, remove_tag)",
        'steps[3].data.entity: unknown entity "deal" (registered: none)',
        'steps[4].transform.op: unknown transform "pivot" (expected one of: map, filter, aggregate, format_date,'
        " render)",
    ]


def test_action_inputs_are_checked_per_action_type(conn: Conn) -> None:
    document = with_steps(
        {"id": "mail", "action": "email.send", "with": {"to": "a@example.com", "subject": "Hi"}},
        {
            "id": "hook",
            "action": "webhook.send",
            "with": {"url": "ftp://x", "method": "FETCH", "timeout": "soon"},
        },
        {"id": "sms", "action": "sms.send", "connection": "", "with": {"to": "+4912345"}},
        {"id": "chat", "action": "discord.send"},
    )
    assert problems(conn, document) == [
        'steps[0].with: needs "text" or "html" (the body of the email)',
        'steps[1].with.url: expected an http:// or https:// URL (got "ftp://x")',
        'steps[1].with.method: expected one of GET, POST, PUT, PATCH, DELETE, HEAD (got "FETCH")',
        'steps[1].with.timeout: invalid duration "soon"',
        'steps[2].connection: expected a connection name (got "")',
        "steps[2].with.body: required key is missing",
        "steps[3].with: required key is missing",
    ]


def test_ids_must_be_unique_and_targets_must_exist(conn: Conn) -> None:
    document = with_steps(
        {
            "id": "check",
            "if": {"field": "trigger.entity_id", "op": "is_null"},
            "then": "nowhere",
            "else": "two",
        },
        slack("two", next="gone"),
        slack("two", on_error={"goto": "missing"}),
        slack("Bad Id"),
        {"id": "pick", "switch": [{"when": {"field": "vars.x", "op": "is_null"}, "goto": "lost"}]},
        {
            "id": "w",
            "wait_for_event": {"event": "email.message.replied", "timeout": "3d"},
            "on_event": "elsewhere",
        },
    )
    assert problems(conn, document) == [
        'steps[0].then: unknown step "nowhere"',
        'steps[1].next: unknown step "gone"',
        'steps[2].id: duplicate step id "two" (already used by steps[1])',
        'steps[2].on_error.goto: unknown step "missing"',
        'steps[3].id: invalid step id "Bad Id" (lowercase letters, digits, _ and -, starting with a letter or digit)',
        'steps[4].switch[0].goto: unknown step "lost"',
        'steps[5].on_event: unknown step "elsewhere"',
    ]


def test_steps_unreachable_from_the_first_step_are_reported(conn: Conn) -> None:
    document = with_steps(
        {"id": "start", "if": {"field": "trigger.entity_id", "op": "is_null"}, "then": "yes", "else": None},
        slack("orphan", next="yes"),
        slack("yes", next=None),
        slack("island"),
        {"id": "end", "stop": {}},
    )
    assert problems(conn, document) == [
        'steps[1]: step "orphan" is unreachable from the first step "start"',
        'steps[3]: step "island" is unreachable from the first step "start"',
        'steps[4]: step "end" is unreachable from the first step "start"',
    ]


def test_error_gotos_switch_cases_and_waits_make_steps_reachable(conn: Conn) -> None:
    document = with_steps(
        slack("start", on_error={"goto": "recover"}, next="route"),
        {"id": "recover", "stop": {"status": "failed"}},
        {
            "id": "route",
            "switch": [{"when": {"field": "vars.x", "op": "is_null"}, "goto": "wait"}],
            "default": None,
        },
        {
            "id": "wait",
            "wait_for_event": {"event": "crm.*", "timeout": "1h"},
            "on_event": None,
            "on_timeout": "late",
        },
        slack("late"),
    )
    assert problems(conn, document) == []


def test_invalid_durations_are_reported_with_their_text(conn: Conn) -> None:
    document = lead_document()
    document["settings"]["timeout"] = "a while"
    document["settings"]["retry"] = {"attempts": 0, "initial": "3x", "backoff": "linear"}
    document["steps"][0]["timeout"] = 30
    document["steps"][1]["delay"] = {"for": "-5m"}
    assert problems(conn, document) == [
        'settings.timeout: invalid duration "a while"',
        "settings.retry.attempts: expected an integer from 1 to 100 (got 0)",
        'settings.retry.backoff: expected "exponential" or "fixed" (got "linear")',
        'settings.retry.initial: invalid duration "3x"',
        'steps[0].timeout: expected a duration such as "30s", "5m", "2h" or "3d" (got 30)',
        'steps[1].delay.for: invalid duration "-5m"',
    ]


def test_delay_shapes_windows_and_until(conn: Conn) -> None:
    document = with_steps(
        {"id": "a", "delay": {}},
        {"id": "b", "delay": {"until": "2026-13-40", "for": "1d"}},
        {"id": "c", "delay": {"window": {"days": ["mon", "someday"], "timezone": "Mars/Olympus"}}},
        {"id": "d", "delay": {"until": "{{trigger.payload.due_at}}"}},
    )
    assert problems(conn, document) == [
        'steps[0].delay: needs "for" (a duration), "until" (a timestamp) or "window" (allowed times)',
        'steps[1].delay.until: cannot be combined with "for" or "window"',
        'steps[1].delay.until: invalid timestamp "2026-13-40"',
        'steps[2].delay.window.days[1]: unknown day "someday" (expected mon, tue, wed, thu, fri, sat, sun)',
        'steps[2].delay.window.timezone: unknown time zone "Mars/Olympus"',
    ]


def test_template_references_to_unknown_roots_and_steps(conn: Conn) -> None:
    document = lead_document()
    document["steps"][0]["with"]["to"] = "{{trigr.payload.email}}"
    document["steps"][3]["with"]["text"] = "{{steps.nope.output.x}}"
    document["steps"][2]["if"] = {"field": "steps.gone.output.status", "op": "equals", "value": 200}
    found = problems(conn, document)
    assert matches(
        found,
        [
            'steps[0].with.to: unknown template root "trigr"...',
            'steps[2].if: refers to unknown step "gone"',
            'steps[3].with: template refers to unknown step "nope"',
        ],
    ), found


def test_item_is_a_template_root_only_inside_transform_map_and_filter(conn: Conn) -> None:
    document = with_steps(
        {
            "id": "m",
            "transform": {"op": "map", "source": "{{trigger.payload.lines}}", "template": "{{item.sku}}"},
        },
        {
            "id": "f",
            "transform": {
                "op": "filter",
                "source": "{{steps.m.output.value}}",
                "where": {"field": "{{item.qty}}", "op": "gt", "value": 1},
                "into": "big_lines",
            },
        },
        {"id": "s", "set": {"sku": "{{item.sku}}"}},
    )
    found = problems(conn, document)
    assert matches(found, ['steps[2].set.sku: unknown template root "item"...']), found


def test_conditions_and_filters_are_checked(conn: Conn) -> None:
    document = lead_document()
    document["trigger"]["condition"] = {"field": "trigger.payload.new.type", "op": "eq", "value": "lead"}
    document["steps"][2]["if"] = {"field": "trigger.payload.new.last_reply_at", "op": "is_nul"}
    found = problems(conn, document)
    assert len(found) == 2
    assert found[0].startswith('trigger.condition.op: unknown operator "eq"')
    assert found[1].startswith('steps[2].if.op: unknown operator "is_nul"')


def test_filter_problems_are_reported_under_the_trigger(conn: Conn) -> None:
    document = lead_document()
    document["trigger"]["filter"] = {"payload.amount": {"$between": [1, 2]}}
    found = problems(conn, document)
    assert len(found) == 1
    assert found[0].startswith("trigger.filter")
    assert "$between" in found[0]


def test_a_workflow_has_exactly_one_trigger(conn: Conn) -> None:
    document = lead_document()
    document["trigger"] = {"schedule": {"cron": "0 9 * * MON"}, "webhook": {}, "date": {"entity": "x"}}
    assert problems(conn, document) == [
        "trigger: a workflow has exactly one trigger, this one has schedule, webhook, date"
    ]
    document["trigger"] = {"manual": True, "event": "crm.contact.created"}
    assert problems(conn, document) == [
        "trigger: a workflow has exactly one trigger, this one has event, manual"
    ]
    document["trigger"] = {"source": "crm"}
    assert problems(conn, document) == [
        'trigger: needs one of "event", "manual", "schedule", "webhook" or "date"'
    ]
    document["trigger"] = {"manual": True, "filter": {"payload.x": 1}}
    assert problems(conn, document) == ['trigger.filter: only allowed with "event"']


def test_schedule_and_webhook_triggers_are_checked(conn: Conn) -> None:
    document = lead_document()
    document["trigger"] = {
        "schedule": {"cron": "0 25 * * *", "timezone": "Mars/Olympus", "overlap": "queue", "jitter": True}
    }
    found = problems(conn, document)
    assert matches(
        found,
        [
            "trigger.schedule.jitter: unknown key (expected one of: cron, timezone, overlap,"
            " max_consecutive_failures)",
            "trigger.schedule.cron: ...",
            'trigger.schedule.timezone: unknown time zone "Mars/Olympus"',
            'trigger.schedule.overlap: expected "skip" or "allow" (got "queue")',
        ],
    ), found
    assert "25" in found[1]
    document["trigger"] = {
        "webhook": {
            "methods": ["post", "TRACE"],
            "ip_allowlist": ["10.0.0.0/8", "not-an-ip"],
            "tolerance": "x",
        }
    }
    assert problems(conn, document) == [
        'trigger.webhook.methods[1]: expected one of GET, POST, PUT, PATCH, DELETE (got "TRACE")',
        'trigger.webhook.ip_allowlist[1]: invalid address or network "not-an-ip"',
        'trigger.webhook.tolerance: invalid duration "x"',
    ]
    document["trigger"] = {"schedule": {"cron": "0 9 * * MON", "timezone": "Europe/Berlin"}}
    assert problems(conn, document) == []


@pytest.mark.usefixtures("deals")
def test_date_triggers_name_a_watched_entity_and_its_date_column(conn: Conn) -> None:
    document = lead_document()
    document["trigger"] = {"date": {"entity": "deal", "column": "title", "offset": "soon", "at": "9am"}}
    assert problems(conn, document) == [
        "trigger.date.entity: entity \"deal\" is not watched (call conveyor.watch('public.deals', ...) first:"
        " its changes move the dates)",
        'trigger.date.column: table public.deals has no date or timestamp column "title"',
        'trigger.date.offset: invalid duration "soon"',
        'trigger.date.at: expected a time of day "HH:MM" such as "09:00" (got "9am")',
    ]
    conn.execute("alter table public.deals add column closes_on date")
    conn.execute("select conveyor.watch('public.deals', 'crm', 'deal')")
    document["trigger"] = {
        "date": {"entity": "deal", "column": "closes_on", "offset": "-7 days", "at": "09:00"}
    }
    assert problems(conn, document) == []


def test_trigger_shapes(conn: Conn) -> None:
    document = lead_document()
    document["trigger"] = {"event": "crm.Contact"}
    assert problems(conn, document) == [
        'trigger.event: invalid event pattern "crm.Contact" (expected module.entity.action such as'
        " crm.contact.created, or a trailing wildcard: crm.deal.*, crm.*, *)"
    ]
    for pattern in ("crm.deal.*", "crm.*", "*"):
        document["trigger"] = {"event": pattern, "source": "crm"}
        assert problems(conn, document) == []


def test_settings_are_checked(conn: Conn) -> None:
    document = lead_document()
    document["settings"] = {
        "run_once_per_entity": "yes",
        "max_executions_per_hour": 1.5,
        "max_concurrent": -1,
        "on_error": "retry",
        "max_steps": 0,
    }
    assert problems(conn, document) == [
        "settings.run_once_per_entity: expected true or false",
        "settings.max_executions_per_hour: expected an integer from 1 to 2147483647 (got 1.5)",
        "settings.max_concurrent: expected an integer from 1 to 2147483647 (got -1)",
        'settings.on_error: expected "fail" or "continue" (got "retry")',
        "settings.max_steps: expected an integer from 1 to 100000 (got 0)",
    ]


def test_header_fields_are_checked(conn: Conn) -> None:
    document = lead_document()
    document.update(slug="New Lead", name=" ", tags=["a", 1], active="yes", description=7)
    assert problems(conn, document) == [
        'slug: invalid slug "New Lead" (lowercase letters, digits and -, starting with a letter or digit)',
        "name: expected a non-empty text",
        "description: expected a text",
        "tags: expected an array of texts",
        "active: expected true or false",
    ]


def test_step_routing_keys_depend_on_the_kind(conn: Conn) -> None:
    document = with_steps(
        {"id": "c", "if": {"field": "vars.x", "op": "is_null"}, "next": "s", "on_error": "retry"},
        {"id": "s", "set": {"Total": 1, "ok": "{{vars.x}}"}, "timeout": "5s", "on_error": "explode"},
    )
    assert problems(conn, document) == [
        'steps[0].next: unknown key for a "if" step (expected one of: id, if, on_error, then, else)',
        'steps[0].on_error: "retry" is only possible for action steps',
        'steps[1].timeout: unknown key for a "set" step (expected one of: id, set, on_error, next)',
        'steps[1].on_error: expected "fail", "continue", "retry" or {"goto": "<step id>"} (got "explode")',
        'steps[1].set.Total: invalid variable name "Total" (lowercase letters, digits and _; not starting with a'
        " digit)",
    ]


def test_emit_and_wait_for_event_are_checked(conn: Conn) -> None:
    document = with_steps(
        {"id": "e", "emit": {"event": "lead.qualified", "payload": {"id": "{{trigger.entity_id}}"}}},
        {"id": "w", "wait_for_event": {"event": "email.message.replied", "match": {"owner": "x"}}},
    )
    assert problems(conn, document) == [
        'steps[0].emit.event: invalid event type "lead.qualified" (expected module.entity.action such as'
        " crm.lead.qualified)",
        "steps[1].wait_for_event.timeout: required key is missing",
        "steps[1].wait_for_event.match.owner: unknown match key (expected entity_type, entity_id, source or"
        " payload.<field>)",
    ]


@pytest.fixture
def deals(conn: Conn) -> None:
    conn.execute("""
        create table public.deals (
          id bigint generated always as identity primary key,
          tenant_id text not null,
          title text,
          amount numeric,
          tags text[] not null default '{}'
        )""")
    conn.execute("create table public.notes (id bigint primary key, tenant_id text not null, body text)")
    conn.execute("""
        insert into conveyor.entities (entity, table_name, id_column, tenant_column, tags_column)
        values ('deal', 'public.deals', 'id', 'tenant_id', 'tags'), ('note', 'public.notes', 'id', 'tenant_id', null)
    """)


@pytest.mark.usefixtures("deals")
def test_data_steps_name_registered_entities_and_existing_columns(conn: Conn) -> None:
    document = with_steps(
        {
            "id": "find",
            "data": {
                "op": "lookup",
                "entity": "deal",
                "where": {"title": "{{trigger.payload.title}}", "stage": "won"},
            },
        },
        {
            "id": "make",
            "data": {"op": "create", "entity": "deal", "values": {"tenant_id": "other", "amount": 5}},
        },
        {
            "id": "tag",
            "data": {"op": "add_tag", "entity": "note", "id": "{{trigger.entity_id}}", "tag": "vip"},
        },
        {"id": "drop", "data": {"op": "delete", "entity": "invoice"}},
        {"id": "edit", "data": {"op": "update", "entity": "deal", "id": "1"}},
    )
    assert problems(conn, document) == [
        'steps[0].data.where.stage: table public.deals has no column "stage"',
        "steps[1].data.values.tenant_id: the tenant column is set by the engine",
        'steps[2].data.op: entity "note" has no tags column, so add_tag is not possible',
        'steps[3].data: needs "id" or "where" to find the row',
        'steps[3].data.entity: unknown entity "invoice" (registered: deal, note)',
        "steps[4].data.values: required key is missing (the columns to change)",
    ]


def test_several_problems_are_reported_at_once(conn: Conn) -> None:
    document = lead_document()
    document["trigger"] = {"event": "crm.contact.created", "colour": "blue"}
    document["steps"][0]["with"]["to"] = "{{trigr.email}}"
    document["steps"][1]["delay"]["for"] = "1 fortnight"
    document["steps"][2]["then"] = "nowhere"
    found = problems(conn, document)
    assert matches(
        found,
        [
            "trigger.colour: unknown key (expected one of: event, source, filter, condition, manual, schedule,"
            " webhook, date)",
            'steps[0].with.to: unknown template root "trigr"...',
            'steps[1].delay.for: invalid duration "1 fortnight"',
            'steps[2].then: unknown step "nowhere"',
            'steps[3]: step "notify" is unreachable from the first step "welcome"',
        ],
    ), found


# ---------------------------------------------------------------------------------------
# publishing


def test_publish_refuses_an_invalid_document_and_stores_nothing(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    document["steps"][0]["with"]["to"] = "{{trigr.email}}"
    document["steps"][2]["else"] = "nowhere"
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        publish(conn, "acme", document)
    diag = raised.value.diag
    assert str(diag.message_primary).startswith(
        'workflow "new-lead-follow-up": 2 problem(s): steps[0].with.to: unknown template root "trigr"'
    )
    assert matches(
        str(diag.message_detail).split("\n"),
        ['steps[0].with.to: unknown template root "trigr"...', 'steps[2].else: unknown step "nowhere"'],
    )
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}


def test_publish_for_an_unknown_tenant_names_it(conn: Conn) -> None:
    with pytest.raises(
        psycopg.errors.NoDataFound, match='workflow "new-lead-follow-up": tenant "ghost" does not exist'
    ):
        publish(conn, "ghost", lead_document())


def test_publish_creates_version_one_then_an_edit_creates_version_two(conn: Conn) -> None:
    make_tenant(conn, "acme")
    first = lead_document()
    workflow_id, version = publish(conn, "acme", first)
    assert version == 1

    second = copy.deepcopy(first)
    second["name"] = "New lead follow-up (v2)"
    second["steps"][0]["with"]["subject"] = "Hello!"
    second["settings"]["max_concurrent"] = 10
    assert publish(conn, "acme", second) == (workflow_id, 2)

    workflow = conn.execute(
        "select * from conveyor.workflows where workflow_id = %s", (workflow_id,)
    ).fetchone()
    assert workflow is not None
    assert (workflow["current_version"], workflow["name"], workflow["active"]) == (
        2,
        "New lead follow-up (v2)",
        True,
    )
    assert (workflow["category"], workflow["tags"]) == ("sales", ["crm", "onboarding"])

    versions = conn.execute(
        "select version, definition, max_concurrent, max_executions_per_hour, run_once_per_entity, timeout::text"
        " from conveyor.workflow_versions where workflow_id = %s order by version",
        (workflow_id,),
    ).fetchall()
    assert [(v["version"], v["definition"], v["max_concurrent"]) for v in versions] == [
        (1, first, None),
        (2, second, 10),
    ]
    assert {(v["max_executions_per_hour"], v["run_once_per_entity"], v["timeout"]) for v in versions} == {
        (500, True, "7 days")
    }
    subjects = conn.execute(
        "select version, config -> 'with' ->> 'subject' as subject from conveyor.workflow_steps"
        " where workflow_id = %s and step_id = 'welcome' order by version",
        (workflow_id,),
    ).fetchall()
    assert subjects == [
        {"version": 1, "subject": "Welcome, {{trigger.payload.new.first_name | default: 'there'}}"},
        {"version": 2, "subject": "Hello!"},
    ]


def test_published_versions_and_steps_cannot_be_updated(conn: Conn) -> None:
    make_tenant(conn, "acme")
    workflow_id, _ = publish(conn, "acme", lead_document())
    for table in ("workflow_versions", "workflow_steps"):
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="immutable once published"):
            conn.execute(
                f"update conveyor.{table} set tenant_id = tenant_id where workflow_id = %s", (workflow_id,)
            )
    row = conn.execute(
        "select definition from conveyor.workflow_versions where workflow_id = %s", (workflow_id,)
    ).fetchone()
    assert row == {"definition": lead_document()}


def test_republishing_an_identical_document_creates_no_version(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    workflow_id, _ = publish(conn, "acme", document)
    assert publish(conn, "acme", copy.deepcopy(document)) == (workflow_id, 1)
    counts = conn.execute(
        "select (select count(*) from conveyor.workflow_versions) as versions,"
        " (select count(*) from conveyor.subscriptions) as subscriptions"
    ).fetchone()
    assert counts == {"versions": 1, "subscriptions": 1}


def test_republishing_identically_with_active_false_only_deactivates(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    workflow_id, _ = publish(conn, "acme", document)
    assert publish(conn, "acme", {**document, "active": False}) == (workflow_id, 1)
    state = conn.execute(
        "select w.active, s.active as subscribed from conveyor.workflows as w"
        " join conveyor.subscriptions as s using (workflow_id)"
    ).fetchall()
    assert state == [{"active": False, "subscribed": False}]


def test_compiled_rows_of_a_small_graph(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    document["settings"]["on_error"] = "continue"
    document["steps"][2:4] = [
        {
            "id": "route",
            "switch": [
                {"when": {"field": "vars.tier", "op": "equals", "value": "gold"}, "goto": "notify"},
                {"when": {"field": "vars.tier", "op": "equals", "value": "none"}, "goto": None},
            ],
        },
        {
            "id": "notify",
            "action": "webhook.send",
            "with": {
                "url": "https://hooks.example.com/lead",
                "method": "POST",
                "body": {"id": "{{trigger.entity_id}}"},
            },
            "timeout": "10s",
            "on_error": {"goto": "done"},
        },
        {
            "id": "reply",
            "wait_for_event": {"event": "email.message.replied", "timeout": "3d"},
            "on_timeout": None,
        },
    ]
    workflow_id, version = publish(conn, "acme", document)
    rows = conn.execute(
        "select step_id, position, kind, action_type, next_step, branches, on_error, error_step, retry_policy,"
        " timeout::text from conveyor.workflow_steps where workflow_id = %s and version = %s order by position",
        (workflow_id, version),
    ).fetchall()
    default_retry = {"attempts": 1, "backoff": "exponential", "initial": "30s", "max": "1h", "jitter": True}
    assert rows == [
        {
            "step_id": "welcome",
            "position": 0,
            "kind": "action",
            "action_type": "email.send",
            "next_step": "wait",
            "branches": None,
            "on_error": "continue",
            "error_step": None,
            "retry_policy": {**default_retry, "attempts": 5},
            "timeout": "00:00:30",
        },
        {
            "step_id": "wait",
            "position": 1,
            "kind": "delay",
            "action_type": None,
            "next_step": "route",
            "branches": None,
            "on_error": "continue",
            "error_step": None,
            "retry_policy": default_retry,
            "timeout": "00:00:30",
        },
        {
            "step_id": "route",
            "position": 2,
            "kind": "switch",
            "action_type": None,
            "next_step": "notify",
            "branches": {
                "cases": [
                    {"when": {"field": "vars.tier", "op": "equals", "value": "gold"}, "goto": "notify"},
                    {"when": {"field": "vars.tier", "op": "equals", "value": "none"}, "goto": None},
                ],
                "default": "notify",
            },
            "on_error": "continue",
            "error_step": None,
            "retry_policy": default_retry,
            "timeout": "00:00:30",
        },
        {
            "step_id": "notify",
            "position": 3,
            "kind": "action",
            "action_type": "webhook.send",
            "next_step": "reply",
            "branches": None,
            "on_error": "goto",
            "error_step": "done",
            "retry_policy": default_retry,
            "timeout": "00:00:10",
        },
        {
            "step_id": "reply",
            "position": 4,
            "kind": "wait_for_event",
            "action_type": None,
            "next_step": "done",
            "branches": {"event": "done", "timeout": None},
            "on_error": "continue",
            "error_step": None,
            "retry_policy": default_retry,
            "timeout": "00:00:30",
        },
        {
            "step_id": "done",
            "position": 5,
            "kind": "stop",
            "action_type": None,
            "next_step": None,
            "branches": None,
            "on_error": "continue",
            "error_step": None,
            "retry_policy": default_retry,
            "timeout": "00:00:30",
        },
    ]
    configs = {
        r["step_id"]: r["config"]
        for r in conn.execute(
            "select step_id, config from conveyor.workflow_steps where workflow_id = %s", (workflow_id,)
        ).fetchall()
    }
    assert configs["notify"] == {
        "action": "webhook.send",
        "with": {
            "url": "https://hooks.example.com/lead",
            "method": "POST",
            "body": {"id": "{{trigger.entity_id}}"},
        },
    }
    assert configs["welcome"]["connection"] == "smtp-main"
    assert configs["reply"] == {"wait_for_event": {"event": "email.message.replied", "timeout": "3d"}}
    assert configs["done"] == {"stop": {"reason": "replied already"}}
    entry = conn.execute(
        "select entry_step, on_error, retry_policy from conveyor.workflow_versions where workflow_id = %s",
        (workflow_id,),
    ).fetchone()
    assert entry == {"entry_step": "welcome", "on_error": "continue", "retry_policy": default_retry}


def test_condition_branches_fall_through_when_omitted_and_end_when_null(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = with_steps(
        {"id": "check", "if": {"field": "vars.x", "op": "is_null"}, "else": None},
        slack("yes", on_error="retry"),
    )
    workflow_id, _ = publish(conn, "acme", document)
    rows = conn.execute(
        "select step_id, next_step, branches, on_error, retry_policy ->> 'attempts' as attempts"
        " from conveyor.workflow_steps where workflow_id = %s order by position",
        (workflow_id,),
    ).fetchall()
    assert rows == [
        {
            "step_id": "check",
            "next_step": "yes",
            "branches": {"then": "yes", "else": None},
            "on_error": "fail",
            "attempts": "1",
        },
        {"step_id": "yes", "next_step": None, "branches": None, "on_error": "retry", "attempts": "3"},
    ]


def test_the_subscription_carries_the_match_key_and_the_compiled_filter(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    document["trigger"] = {
        "event": "crm.contact.*",
        "source": "crm",
        "filter": {"payload.new.type": "lead"},
        "condition": {"field": "trigger.payload.new.email", "op": "is_not_empty"},
    }
    workflow_id, version = publish(conn, "acme", document)
    subscription = conn.execute(
        "select tenant_id, version, match_key, source, filter, condition, active,"
        " filter_path::text = conveyor.compile_filter(filter)::text as compiled,"
        ' jsonb_path_match(\'{"payload": {"new": {"type": "lead"}}}\', filter_path) as matches_lead,'
        ' jsonb_path_match(\'{"payload": {"new": {"type": "customer"}}}\', filter_path) as matches_other'
        " from conveyor.subscriptions where workflow_id = %s",
        (workflow_id,),
    ).fetchall()
    assert subscription == [
        {
            "tenant_id": "acme",
            "version": version,
            "match_key": "crm.contact.*",
            "source": "crm",
            "filter": {"payload.new.type": "lead"},
            "condition": {"field": "trigger.payload.new.email", "op": "is_not_empty"},
            "active": True,
            "compiled": True,
            "matches_lead": True,
            "matches_other": False,
        }
    ]


def test_a_new_version_moves_the_subscription_and_keeps_the_old_row_inactive(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    workflow_id, _ = publish(conn, "acme", document)
    document["trigger"]["event"] = "crm.contact.updated"
    publish(conn, "acme", document)
    rows = conn.execute(
        "select version, match_key, active from conveyor.subscriptions where workflow_id = %s order by version",
        (workflow_id,),
    ).fetchall()
    assert rows == [
        {"version": 1, "match_key": "crm.contact.created", "active": False},
        {"version": 2, "match_key": "crm.contact.updated", "active": True},
    ]


def test_a_manual_workflow_has_no_subscription(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    workflow_id, _ = publish(conn, "acme", document)
    document["trigger"] = {"manual": True}
    publish(conn, "acme", document)
    active = conn.execute(
        "select count(*) as n from conveyor.subscriptions where workflow_id = %s and active", (workflow_id,)
    ).fetchone()
    assert active == {"n": 0}


def test_schedule_and_webhook_triggers_are_kept_in_step_with_the_current_version(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    document["trigger"] = {"schedule": {"cron": "0 9 * * MON", "timezone": "Europe/Berlin"}}
    workflow_id, _ = publish(conn, "acme", document)

    def triggers() -> dict[str, Any]:
        row = conn.execute(
            "select (select array_agg(cron) from conveyor.schedules where workflow_id = %(w)s) as schedules,"
            " (select count(*) from conveyor.webhook_endpoints where workflow_id = %(w)s) as webhooks,"
            " (select count(*) from conveyor.subscriptions where workflow_id = %(w)s and active) as subscriptions",
            {"w": workflow_id},
        ).fetchone()
        assert row is not None
        return row

    assert triggers() == {"schedules": ["0 9 * * MON"], "webhooks": 0, "subscriptions": 0}
    document["trigger"] = {"webhook": {"methods": ["POST"]}}
    publish(conn, "acme", document)
    assert triggers() == {"schedules": None, "webhooks": 1, "subscriptions": 0}
    document["trigger"] = {"event": "crm.contact.created"}
    publish(conn, "acme", document)
    assert triggers() == {"schedules": None, "webhooks": 0, "subscriptions": 1}


def test_deactivate_and_activate_flip_the_subscription(conn: Conn) -> None:
    make_tenant(conn, "acme")
    document = lead_document()
    workflow_id, _ = publish(conn, "acme", document)
    document["steps"][0]["with"]["subject"] = "v2"
    publish(conn, "acme", document)

    def state() -> list[dict[str, Any]]:
        return conn.execute(
            "select s.version, s.active, w.active as workflow_active from conveyor.subscriptions as s"
            " join conveyor.workflows as w using (workflow_id) where workflow_id = %s order by s.version",
            (workflow_id,),
        ).fetchall()

    changed = conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false) as c")
    assert changed.fetchone() == {"c": True}
    assert state() == [
        {"version": 1, "active": False, "workflow_active": False},
        {"version": 2, "active": False, "workflow_active": False},
    ]
    unchanged = conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false) as c")
    assert unchanged.fetchone() == {"c": False}

    # An edit published while inactive stays inactive (no "active" key in the document).
    document["steps"][0]["with"]["subject"] = "v3"
    publish(conn, "acme", document)
    assert [r["active"] for r in state()] == [False, False, False]

    conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', true)")
    assert state() == [
        {"version": 1, "active": False, "workflow_active": True},
        {"version": 2, "active": False, "workflow_active": True},
        {"version": 3, "active": True, "workflow_active": True},
    ]


def test_deactivation_leaves_executions_running_on_their_version(conn: Conn) -> None:
    make_tenant(conn, "acme")
    workflow_id, _ = publish(conn, "acme", lead_document())
    execution = conn.execute(
        "insert into conveyor.executions (tenant_id, workflow_id, version, status, current_step, wait_kind)"
        " values ('acme', %s, 1, 'waiting', 'wait', 'delay') returning execution_id",
        (workflow_id,),
    ).fetchone()
    assert execution is not None
    conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false)")
    row = conn.execute(
        "select status, version, current_step from conveyor.executions where execution_id = %s",
        (execution["execution_id"],),
    ).fetchone()
    assert row == {"status": "waiting", "version": 1, "current_step": "wait"}


def test_slugs_are_unique_per_tenant_not_globally(conn: Conn) -> None:
    make_tenant(conn, "acme")
    make_tenant(conn, "globex")
    acme_id, acme_version = publish(conn, "acme", lead_document())
    globex_id, globex_version = publish(conn, "globex", lead_document())
    assert acme_id != globex_id
    assert (acme_version, globex_version) == (1, 1)
    document = lead_document()
    document["name"] = "Renamed"
    assert publish(conn, "acme", document) == (acme_id, 2)
    rows = conn.execute(
        "select tenant_id, slug, current_version from conveyor.workflows order by tenant_id"
    ).fetchall()
    assert rows == [
        {"tenant_id": "acme", "slug": "new-lead-follow-up", "current_version": 2},
        {"tenant_id": "globex", "slug": "new-lead-follow-up", "current_version": 1},
    ]


def test_another_tenant_cannot_publish_into_a_tenant(conn: Conn) -> None:
    make_tenant(conn, "acme")
    make_tenant(conn, "globex")
    globex = mint_token(conn, "globex")
    conn.execute("set role conveyor_app")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(conn, globex):
        publish(conn, "acme", lead_document())
    # The application role publishes for its own tenant through the same function.
    with acting_for(conn, globex):
        workflow_id, version = publish(conn, "globex", lead_document())
        assert version == 1
        assert conn.execute("select tenant_id from conveyor.workflows").fetchall() == [
            {"tenant_id": "globex"}
        ]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_for(conn, globex):
        conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false)")
    conn.execute("reset role")
    owners = conn.execute("select tenant_id from conveyor.workflows where workflow_id = %s", (workflow_id,))
    assert owners.fetchall() == [{"tenant_id": "globex"}]


def test_export_returns_the_published_document_of_any_version(conn: Conn) -> None:
    make_tenant(conn, "acme")
    first = lead_document()
    publish(conn, "acme", first)
    second = copy.deepcopy(first)
    second["description"] = "Second edition"
    publish(conn, "acme", second)
    conn.execute("select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false)")

    def export(version: int | None) -> Any:
        row = conn.execute(
            "select conveyor.export_workflow('acme', 'new-lead-follow-up', %s) as d", (version,)
        )
        result = row.fetchone()
        assert result is not None
        return result["d"]

    assert export(None) == {**second, "active": False}
    assert export(1) == {**first, "active": False}
    with pytest.raises(psycopg.errors.NoDataFound, match="has no version 3"):
        export(3)
    with pytest.raises(psycopg.errors.NoDataFound, match='workflow "nope" not found for tenant "acme"'):
        conn.execute("select conveyor.export_workflow('acme', 'nope')")


def test_an_exported_document_republishes_as_the_same_version(conn: Conn) -> None:
    make_tenant(conn, "acme")
    workflow_id, _ = publish(conn, "acme", lead_document())
    exported = conn.execute("select conveyor.export_workflow('acme', 'new-lead-follow-up') as d").fetchone()
    assert exported is not None
    assert publish(conn, "acme", exported["d"]) == (workflow_id, 1)


def test_delete_removes_a_workflow_without_executions(conn: Conn) -> None:
    make_tenant(conn, "acme")
    publish(conn, "acme", lead_document())
    conn.execute("select conveyor.delete_workflow('acme', 'new-lead-follow-up')")
    counts = conn.execute(
        "select (select count(*) from conveyor.workflows) + (select count(*) from conveyor.workflow_versions)"
        " + (select count(*) from conveyor.workflow_steps) + (select count(*) from conveyor.subscriptions) as n"
    ).fetchone()
    assert counts == {"n": 0}


def test_delete_is_refused_when_the_workflow_has_executions(conn: Conn) -> None:
    make_tenant(conn, "acme")
    workflow_id, _ = publish(conn, "acme", lead_document())
    conn.execute(
        "insert into conveyor.executions (tenant_id, workflow_id, version) values ('acme', %s, 1)",
        (workflow_id,),
    )
    with pytest.raises(psycopg.errors.ObjectInUse) as raised:
        conn.execute("select conveyor.delete_workflow('acme', 'new-lead-follow-up')")
    assert raised.value.diag.message_primary == (
        'workflow "new-lead-follow-up" has 1 execution(s) and cannot be deleted'
    )
    assert raised.value.diag.message_hint == (
        "Deactivate it instead: select conveyor.set_workflow_active('acme', 'new-lead-follow-up', false);"
    )
    assert conn.execute("select count(*) as n from conveyor.workflow_versions").fetchone() == {"n": 1}


# ---------------------------------------------------------------------------------------
# properties: validation never crashes, and what it accepts publishes into a closed graph

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    TEXT,
    st.sampled_from(
        [
            "",
            "{{",
            "}}",
            "{{ }}",
            "{{trigger.entity_id}}",
            "{{steps.welcome.output}}",
            "{{nope.x}}",
            "1d",
            "0s",
            "welcome",
            "wait",
            "replied",
            "notify",
            "done",
            "crm.*",
            "lead",
            "is_null",
            "equals",
            "fail",
            "continue",
            "retry",
            "email.send",
            "09:00-17:00",
            "mon",
        ]
    ),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "id",
            "next",
            "then",
            "else",
            "on_error",
            "goto",
            "with",
            "to",
            "text",
            "op",
            "field",
            "value",
            "for",
            "until",
            "window",
            "event",
            "filter",
            "condition",
            "manual",
            "retry",
            "attempts",
            "timeout",
            "action",
            "if",
            "set",
            "stop",
            "switch",
            "when",
            "data",
            "entity",
            "transform",
            "emit",
            "delay",
        ]
    ),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """The documented example with a few random edits: a value replaced, a key removed or added."""
    document: Any = lead_document()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(document)))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path:
            if action == "replace":
                document = draw(JSON)
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(JSON)
        elif action == "remove":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(KEYS)] = draw(JSON)
        elif isinstance(parent[last], list):
            parent[last].append(draw(JSON))
    return document


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=mutated_documents())
def test_validation_reports_problems_and_never_raises(conn: Conn, document: Any) -> None:
    found = problems(conn, document)
    assert all(": " in message for message in found), found
    event("invalid" if found else "valid")
    if found:
        return
    # A document without problems publishes, and its compiled graph is closed: every
    # target names a step of the same version.
    with conn.transaction(force_rollback=True):
        conn.execute("insert into conveyor.tenants (tenant_id, name) values ('prop', 'Prop')")
        workflow_id, version = publish(conn, "prop", document)
        rows = conn.execute(
            "select step_id, next_step, branches, error_step from conveyor.workflow_steps"
            " where workflow_id = %s and version = %s",
            (workflow_id, version),
        ).fetchall()
    ids = {r["step_id"] for r in rows}
    assert len(rows) == len(document["steps"])
    for row in rows:
        branches = row["branches"] or {}
        targets = [
            row["next_step"],
            row["error_step"],
            *(branches.get(k) for k in ("then", "else", "default")),
        ]
        targets += [branches.get("event"), branches.get("timeout")]
        targets += [case["goto"] for case in branches.get("cases", [])]
        assert {t for t in targets if t is not None} <= ids, row
