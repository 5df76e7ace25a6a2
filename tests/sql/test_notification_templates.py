"""Notification templates: the system templates, tenant overrides saved only when valid (each
problem with its path), declared variables (a missing required one is an error naming it,
never a literal `{{...}}`), HTML escaping of inserted values, and the publish check of a
notify step's template slug. Recipients: addresses from the registered user entity."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import execution, install, start, step_runs
from tests.sql.notification_helpers import channels, deliveries, notify, platform_users
from tests.sql.workflow_documents import publish

Conn = psycopg.Connection[dict[str, Any]]

SYSTEM = [
    "approval_required",
    "campaign_activated",
    "deal_stage_changed",
    "deal_won",
    "digest",
    "interview_scheduled",
    "mentioned",
    "status_changed",
    "submission_created",
    "task_assigned",
]

WELCOME = {
    "variables": {
        "name": {},
        "team": {"required": False, "default": "the team"},
        "note": {"required": False},
    },
    "category": "onboarding",
    "type": "success",
    "in_app": {"title": "Welcome, {{data.name}}", "message": "From {{data.team}}.{{data.note}}"},
    "email": {
        "subject": "Welcome {{data.name}}",
        "html": "<p>Hello {{data.name}}</p><div>{{data.note | raw}}</div>",
        "text": "Hello {{data.name}}",
    },
    "sms": {"body": "Welcome {{data.name}}"},
}


def save(conn: Conn, tenant: str, slug: str, doc: Any) -> None:
    conn.execute("select conveyor.save_notification_template(%s, %s, %s)", (tenant, slug, Jsonb(doc)))


def templates(conn: Conn, tenant: str) -> dict[str, dict[str, Any]]:
    rows = conn.execute("select * from conveyor.list_notification_templates(%s)", (tenant,)).fetchall()
    return {r["slug"]: r for r in rows}


def save_problems(conn: Conn, tenant: str, slug: str, doc: Any) -> list[str]:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        save(conn, tenant, slug, doc)
    detail = caught.value.diag.message_detail
    assert detail is not None
    return detail.split("\n")


def test_every_system_template_is_valid_and_listed_for_every_tenant(conn: Conn, tenant: str) -> None:
    listed = templates(conn, tenant)
    assert sorted(listed) == SYSTEM
    assert {r["source"] for r in listed.values()} == {"system"}
    for slug in SYSTEM:
        found = conn.execute(
            "select conveyor.notification_template_errors(conveyor.system_notification_templates() -> %s, %s) as e",
            (slug, slug),
        ).fetchall()
        assert found == [], slug


def test_a_tenant_override_replaces_the_system_template_until_it_is_deleted(conn: Conn, tenant: str) -> None:
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    mine = {"variables": {"deal": {}}, "in_app": {"title": "We won {{data.deal}}!"}}
    save(conn, tenant, "deal_won", mine)
    assert templates(conn, tenant)["deal_won"]["source"] == "tenant"
    assert templates(conn, "globex")["deal_won"]["source"] == "system"
    notify(conn, tenant, "u1", {"template": "deal_won", "data": {"deal": "Big"}})
    notify(conn, "globex", "u1", {"template": "deal_won", "data": {"deal": "Big"}})
    titles = conn.execute(
        "select tenant_id, title from conveyor.notifications order by notification_id"
    ).fetchall()
    assert [(r["tenant_id"], r["title"]) for r in titles] == [
        ("acme", "We won Big!"),
        ("globex", "Deal won: Big"),
    ]
    assert conn.execute(
        "select conveyor.delete_notification_template(%s, 'deal_won') as d", (tenant,)
    ).fetchone() == {"d": True}
    assert templates(conn, tenant)["deal_won"]["source"] == "system"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("nope", ['template "t": expected a template object with "in_app" (got string)']),
        ({"in_app": {"title": "x"}, "colour": 1}, [
            'template "t".colour: unknown key (expected variables, category, type, priority, in_app, email, sms)'
        ]),
        ({"variables": {}}, ['template "t".in_app: missing (every template has the in-app title)']),
        ({"in_app": {"title": "", "link": "x"}}, [
            'template "t".in_app.link: unknown key (expected title, message, action_url, action_label)',
            'template "t".in_app.title: required (a non-empty text)',
        ]),
        ({"in_app": {"title": "Hi {{data.who}}"}}, [
            'template "t".in_app.title: {{data.who}}: variable "who" is not declared in template "t".variables'
        ]),
        ({"variables": {"who": {"required": "yes"}}, "in_app": {"title": "Hi {{data.who}}"}}, [
            'template "t".variables.who.required: expected true or false'
        ]),
        ({"in_app": {"title": "x"}, "email": {"subject": "s"}}, ['template "t".email: needs "html" or "text"']),
        ({"in_app": {"title": "x"}, "sms": {"body": 5}}, ['template "t".sms.body: expected a text (got 5)']),
        ({"in_app": {"title": "x"}, "priority": "urgent"}, [
            'template "t".priority: unknown priority "urgent" (expected low, normal, high or critical)'
        ]),
    ],
)  # fmt: skip
def test_a_template_is_saved_only_when_valid_and_each_problem_names_its_path(
    conn: Conn, tenant: str, doc: Any, expected: list[str]
) -> None:
    assert save_problems(conn, tenant, "t", doc) == expected
    assert conn.execute("select count(*) as n from conveyor.notification_templates").fetchone() == {"n": 0}


def test_a_template_expression_that_does_not_parse_is_refused_with_its_path(conn: Conn, tenant: str) -> None:
    [problem] = save_problems(conn, tenant, "t", {"in_app": {"title": "Hi {{trigger.x}}"}})
    assert problem.startswith('template "t".in_app.title: ')
    assert "trigger" in problem


def test_a_bad_slug_is_refused(conn: Conn, tenant: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="template slug 'Bad Slug'"):
        save(conn, tenant, "Bad Slug", {"in_app": {"title": "x"}})


def test_a_missing_required_variable_is_an_error_naming_it_and_nothing_is_written(
    conn: Conn, tenant: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        notify(conn, tenant, "u1", {"template": "interview_scheduled", "data": {"candidate": "Ann"}})
    assert caught.value.diag.message_primary == (
        'conveyor.notify_user.data: template "interview_scheduled" requires the variable(s) job, when, not given'
    )
    assert conn.execute("select count(*) as n from conveyor.notifications").fetchone() == {"n": 0}


def test_optional_variables_take_their_default_or_render_as_nothing(conn: Conn, tenant: str) -> None:
    save(conn, tenant, "welcome", WELCOME)
    notify(conn, tenant, "u1", {"template": "welcome", "data": {"name": "Ann"}})
    row = conn.execute("select title, message, category, type from conveyor.notifications").fetchone()
    assert row == {
        "title": "Welcome, Ann",
        "message": "From the team.",
        "category": "onboarding",
        "type": "success",
    }


def test_the_spec_s_own_fields_win_over_the_template_s(conn: Conn, tenant: str) -> None:
    notify(
        conn,
        tenant,
        "u1",
        {"template": "deal_won", "data": {"deal": "D"}, "title": "Mine", "category": "wins"},
    )
    row = conn.execute("select title, message, category, action_label from conveyor.notifications").fetchone()
    assert row == {"title": "Mine", "message": "D was won. ", "category": "wins", "action_label": "Open deal"}


def test_an_email_s_html_escapes_inserted_values_but_its_text_and_raw_do_not(conn: Conn, tenant: str) -> None:
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, None)])
    channels(conn, tenant)
    save(conn, tenant, "welcome", WELCOME)
    notify(
        conn,
        tenant,
        "u1",
        {"template": "welcome", "data": {"name": "<script>x</script>&", "note": "<b>ok</b>"}},
    )
    [email] = deliveries(conn)
    assert email["content"] == {
        "subject": "Welcome <script>x</script>&",
        "html": "<p>Hello &lt;script&gt;x&lt;/script&gt;&amp;</p><div><b>ok</b></div>",
        "text": "Hello <script>x</script>&",
    }
    assert "{{" not in str(email["content"])


def test_the_notify_step_renders_a_template_with_data_from_the_trigger(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "won",
        "trigger": {"event": "crm.deal.won"},
        "steps": [
            {
                "id": "tell",
                "notify": {"to": "u1", "template": "deal_won", "data": {"deal": "{{trigger.payload.name}}"}},
            }
        ],
    }
    execution_id = start(conn, tenant, install(conn, tenant, doc), {"payload": {"name": "Initech"}})
    assert execution(conn, execution_id)["status"] == "completed"
    assert conn.execute("select title from conveyor.notifications").fetchone() == {
        "title": "Deal won: Initech"
    }


def test_a_step_missing_a_required_variable_fails_with_the_variable_named(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "won",
        "trigger": {"event": "crm.deal.won"},
        "steps": [{"id": "tell", "notify": {"to": "u1", "template": "deal_won", "data": {}}}],
    }
    execution_id = start(conn, tenant, install(conn, tenant, doc))
    assert execution(conn, execution_id)["status"] == "failed"
    error = step_runs(conn, execution_id)[0]["error"]["message"]
    assert 'step "tell".notify.data: template "deal_won" requires the variable(s) deal, not given' in error
    assert conn.execute("select count(*) as n from conveyor.notifications").fetchone() == {"n": 0}


def test_publish_refuses_a_notify_step_naming_an_unknown_template(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "w",
        "name": "W",
        "trigger": {"event": "crm.deal.won"},
        "steps": [
            {"id": "a", "notify": {"to": "u1", "template": "deal_won", "data": {"deal": "x"}}},
            {"id": "b", "notify": {"to": "u1", "template": "welcome", "data": {"name": "x"}}},
        ],
    }
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        publish(conn, tenant, doc)
    assert caught.value.diag.message_detail == (
        'steps[1].notify.template: no notification template "welcome" (the tenant\'s or a system template)'
    )
    save(conn, tenant, "welcome", WELCOME)
    assert publish(conn, tenant, doc)[1] == 1


def test_notify_step_validation_of_template_and_data(conn: Conn) -> None:
    from tests.sql.workflow_documents import problems, with_steps

    assert problems(conn, with_steps({"id": "t", "notify": {"to": "u1", "template": 5}})) == [
        "steps[0].notify.template: expected a template slug (got 5)"
    ]
    assert problems(
        conn, with_steps({"id": "t", "notify": {"to": "u1", "title": "x", "data": {"a": 1}}})
    ) == ['steps[0].notify.data: template variables without a "template"']


# --- recipients ---------------------------------------------------------------------------


def test_addresses_come_from_the_registered_user_entity_of_the_tenant(conn: Conn, tenant: str) -> None:
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    platform_users(
        conn,
        [(tenant, "u1", "ann@acme.test", "+15551", None), ("globex", "u1", "bob@globex.test", None, None)],
    )
    channels(conn, tenant, sms=True)
    channels(conn, "globex")
    conn.execute(
        'select conveyor.set_notification_preferences(t, \'u1\', \'*\', \'{"channels": ["in_app", "email", "sms"]}\')'
        " from (values ('acme'), ('globex')) as v (t)"
    )
    notify(conn, tenant, "u1", {"title": "Hi"})
    notify(conn, "globex", "u1", {"title": "Hi"})
    rows = [(d["tenant_id"], d["channel"], d["address"], d["status"], d["reason"]) for d in deliveries(conn)]
    assert rows == [
        ("acme", "email", "ann@acme.test", "queued", None),
        ("acme", "sms", "+15551", "queued", None),
        ("globex", "email", "bob@globex.test", "queued", None),
        (
            "globex",
            "sms",
            None,
            "dropped",
            "no sms connection is set for the tenant (conveyor.set_notification_channel)",
        ),
    ]


def test_a_missing_user_still_gets_the_in_app_row_and_email_is_skipped_with_no_address(
    conn: Conn, tenant: str
) -> None:
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, None)])
    channels(conn, tenant)
    notify(conn, tenant, "ghost", {"title": "Hi"})
    assert conn.execute("select user_id from conveyor.notifications").fetchall() == [{"user_id": "ghost"}]
    [email] = deliveries(conn)
    assert (email["status"], email["reason"], email["address"]) == ("dropped", "no address", None)


def test_without_a_tenant_email_connection_the_channel_is_skipped_with_the_reason(
    conn: Conn, tenant: str
) -> None:
    platform_users(conn, [(tenant, "u1", "ann@acme.test", "+15551", None)])
    channels(conn, tenant, email=False, sms=True)
    notify(conn, tenant, "u1", {"title": "Hi"})
    [email] = deliveries(conn)
    assert email["status"] == "dropped"
    assert email["reason"] == "no email connection is set for the tenant (conveyor.set_notification_channel)"


def test_a_tenant_with_no_channel_at_all_sends_in_app_only_and_records_no_delivery(
    conn: Conn, tenant: str
) -> None:
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, None)])
    notify(conn, tenant, "u1", {"title": "Hi"})
    assert conn.execute("select title from conveyor.notifications").fetchall() == [{"title": "Hi"}]
    assert deliveries(conn) == []


def test_register_and_set_channel_refuse_what_does_not_exist(conn: Conn, tenant: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown entity 'person'"):
        conn.execute("select conveyor.register_notification_users('person', 'email')")
    platform_users(conn, [])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="has no column mail"):
        conn.execute("select conveyor.register_notification_users('user', 'mail')")
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="tenant 'acme' has no connection named 'nope'"
    ):
        conn.execute("select conveyor.set_notification_channel('acme', 'email', 'nope')")
    channels(conn, tenant, email=False, sms=True)
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match="connection 'text' is a twilio connection"
    ):
        conn.execute("select conveyor.set_notification_channel('acme', 'email', 'text')")


def test_a_recipient_s_unknown_time_zone_is_the_tenant_s(conn: Conn) -> None:
    conn.execute("select conveyor.create_tenant('acme', 'Acme', 'Europe/Lisbon')")
    platform_users(
        conn, [("acme", "u1", "a@acme.test", None, "Mars/Base"), ("acme", "u2", None, None, "Asia/Tokyo")]
    )
    found = conn.execute(
        "select conveyor.notification_recipient('acme', u) as r from unnest(array['u1', 'u2', 'u3']) as u"
    ).fetchall()
    assert [r["r"] for r in found] == [
        {"found": True, "email": "a@acme.test", "phone": None, "timezone": "Europe/Lisbon"},
        {"found": True, "email": None, "phone": None, "timezone": "Asia/Tokyo"},
        {"found": False, "timezone": "Europe/Lisbon"},
    ]
