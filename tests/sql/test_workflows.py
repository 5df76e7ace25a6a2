"""Workflow documents published: immutable versions, the compiled step graph, subscriptions,
activation, export and deletion (sql/workflows.sql). Validation: test_workflow_validation.py."""

from __future__ import annotations

import copy
from typing import Any

import psycopg
import pytest

from tests.sql.interpreter_helpers import make_tenant
from tests.sql.tenant_context import acting_for, mint_token
from tests.sql.workflow_documents import lead_document, matches, publish, slack, with_steps

Conn = psycopg.Connection[dict[str, Any]]


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
        "Deactivate it instead: `conveyor workflows deactivate new-lead-follow-up --tenant acme`."
    )
    assert conn.execute("select count(*) as n from conveyor.workflow_versions").fetchone() == {"n": 1}
