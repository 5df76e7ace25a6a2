"""Workflow documents: conveyor.validate_workflow reports every problem with its path, in
document order (sql/workflow_validation.sql). That it never raises: test_workflow_properties.py."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.sql.workflow_documents import lead_document, matches, problems, slack, with_steps

Conn = psycopg.Connection[dict[str, Any]]


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
        " max_concurrent, timeout, retry, on_error, max_steps, concurrency, debounce, throttle)",
        "steps[0].with.to: required key is missing",
        "steps[0].with.colour: unknown key (expected one of: to, subject, text, html, cc, bcc, from_name, reply_to,"
        " tags, list_unsubscribe)",
        'steps[3].priority: unknown key for a "action" step (expected one of: id, action, on_error, connection,'
        " with, next, retry, timeout, tags, list_unsubscribe)",
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
        " wait_for_event, wait_until, split, parallel, for_each, call, notify, approval, campaign, enroll)",
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
        'trigger.date.entity: entity "deal" is not watched (`conveyor tables watch public.deals --module M` first:'
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
