"""In-app notifications: the notify step writes them in its execution's transaction, a user
lists and marks their own (and nobody else's), and each new one is announced by NOTIFY."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import execution, install, start, step_runs
from tests.sql.tenant_context import acting_for
from tests.sql.workflow_documents import problems, with_steps

Conn = psycopg.Connection[dict[str, Any]]


def notify_doc(spec: dict[str, Any], slug: str = "tell") -> dict[str, Any]:
    return {
        "slug": slug,
        "trigger": {"event": "crm.contact.created"},
        "steps": [{"id": "tell", "notify": spec}, {"id": "done", "stop": {}}],
    }


LEAD = {
    "to": ["u1", "{{trigger.payload.owner}}"],
    "title": "New lead {{trigger.entity_id}}",
    "message": "Call them today",
    "category": "crm",
    "type": "action_required",
    "priority": "high",
    "entity_type": "contact",
    "entity_id": "{{trigger.entity_id}}",
    "action_url": "/contacts/{{trigger.entity_id}}",
    "action_label": "Open",
    "group_key": "lead-{{trigger.entity_id}}",
    "expires_in": "7d",
}


def notifications(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.notifications order by notification_id").fetchall()


def notify_user(conn: Conn, tenant: str, user: str, title: str, **fields: Any) -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, Jsonb({"title": title, **fields}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


# --- the notify step ---------------------------------------------------------------------


def test_the_notify_step_writes_one_row_per_recipient_and_outputs_their_ids(conn: Conn, tenant: str) -> None:
    workflow = install(conn, tenant, notify_doc(LEAD))
    execution_id = start(conn, tenant, workflow, {"payload": {"owner": "u2"}, "entity_id": "c7"})
    assert execution(conn, execution_id)["status"] == "completed"
    rows = notifications(conn)
    assert [r["user_id"] for r in rows] == ["u1", "u2"]
    first = rows[0]
    assert (first["tenant_id"], first["title"], first["message"], first["category"]) == (
        "acme",
        "New lead c7",
        "Call them today",
        "crm",
    )
    assert (first["type"], first["priority"], first["entity_type"], first["entity_id"]) == (
        "action_required",
        "high",
        "contact",
        "c7",
    )
    assert (first["action_url"], first["action_label"], first["group_key"]) == (
        "/contacts/c7",
        "Open",
        "lead-c7",
    )
    assert (first["execution_id"], first["step_id"], first["read_at"]) == (execution_id, "tell", None)
    assert first["expires_at"] - first["created_at"] == timedelta(days=7)
    run = step_runs(conn, execution_id)[0]
    assert run["output"] == {"notification_ids": [r["notification_id"] for r in rows]}


def test_a_rolled_back_platform_transaction_leaves_no_notification_and_sends_no_notify(
    db_url: str, conn: Conn, tenant: str
) -> None:
    workflow = install(conn, tenant, notify_doc({"to": "u1", "title": "Hello"}))
    with (
        psycopg.connect(db_url, autocommit=True) as listener,
        psycopg.connect(db_url, row_factory=dict_row) as tx,
    ):
        listener.execute("listen conveyor_notifications")
        start(tx, tenant, workflow)
        # inside the platform's transaction the row is there ...
        assert [r["user_id"] for r in notifications(tx)] == ["u1"]
        tx.rollback()
        # ... and with it rolled back, neither the row nor its NOTIFY
        assert list(listener.notifies(timeout=0.5)) == []
    assert notifications(conn) == []


def test_the_notify_names_tenant_user_and_id_and_is_sent_on_commit(
    db_url: str, conn: Conn, tenant: str
) -> None:
    workflow = install(conn, tenant, notify_doc({"to": ["u1", "u2"], "title": "Hello"}))
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen conveyor_notifications")
        start(conn, tenant, workflow)
        received = list(listener.notifies(timeout=5, stop_after=2))
    ids = [r["notification_id"] for r in notifications(conn)]
    assert [(n.channel, json.loads(n.payload)) for n in received] == [
        ("conveyor_notifications", {"tenant": "acme", "user": "u1", "id": ids[0]}),
        ("conveyor_notifications", {"tenant": "acme", "user": "u2", "id": ids[1]}),
    ]


def test_a_rendered_recipient_list_over_the_limit_fails_the_step_naming_it(conn: Conn, tenant: str) -> None:
    conn.execute("set conveyor.max_notify_recipients = 3")
    workflow = install(conn, tenant, notify_doc({"to": "{{trigger.payload.team}}", "title": "Hi"}))
    execution_id = start(conn, tenant, workflow, {"payload": {"team": ["a", "b", "c", "d"]}})
    assert execution(conn, execution_id)["status"] == "failed"
    error = step_runs(conn, execution_id)[0]["error"]["message"]
    assert 'step "tell".notify.to: 4 recipients, at most 3 may be notified by one step' in error
    assert notifications(conn) == []


def test_a_rendered_type_that_is_unknown_fails_the_step_and_writes_nothing(conn: Conn, tenant: str) -> None:
    workflow = install(
        conn, tenant, notify_doc({"to": ["u1", "u2"], "title": "Hi", "type": "{{trigger.payload.t}}"})
    )
    execution_id = start(conn, tenant, workflow, {"payload": {"t": "loud"}})
    assert execution(conn, execution_id)["status"] == "failed"
    error = step_runs(conn, execution_id)[0]["error"]["message"]
    assert "step \"tell\".notify.type: unknown type 'loud'" in error
    assert notifications(conn) == []


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"title": "Hi"}, ["steps[0].notify.to: required key is missing"]),
        ({"to": "u1"}, ['steps[0].notify.title: required key is missing (or name a "template")']),
        ({"to": "u1", "title": ""}, ['steps[0].notify.title: expected a non-empty text (got "")']),
        (
            {"to": "u1", "title": "Hi", "type": "loud"},
            [
                'steps[0].notify.type: unknown type "loud" (expected info, success, warning, error or action_required)'
            ],
        ),
        (
            {"to": "u1", "title": "Hi", "priority": "urgent"},
            ['steps[0].notify.priority: unknown priority "urgent" (expected low, normal, high or critical)'],
        ),
        (
            {"to": "u1", "title": "Hi", "expires_in": "soon"},
            ['steps[0].notify.expires_in: invalid duration "soon"'],
        ),
        ({"to": [], "title": "Hi"}, ["steps[0].notify.to: the list of recipients is empty"]),
        (
            {"to": ["u1", {"id": 2}], "title": "Hi"},
            ['steps[0].notify.to[1]: expected a user id (got {"id": 2})'],
        ),
        (
            {"to": [f"u{i}" for i in range(101)], "title": "Hi"},
            ["steps[0].notify.to: 101 recipients, at most 100 (setting conveyor.max_notify_recipients)"],
        ),
        (
            {"to": "u1", "title": "Hi", "colour": "red"},
            [
                "steps[0].notify.colour: unknown key (expected one of: to, title, message, category, type, priority,"
                " entity_type, entity_id, action_url, action_label, group_key, expires_in, template, data)"
            ],
        ),
        (
            {"to": "u1", "title": "Hi {{steps.nowhere.output.x}}"},
            ['steps[0].notify.title: template refers to unknown step "nowhere"'],
        ),
    ],
)
def test_validation_names_each_problem_by_its_path(
    conn: Conn, spec: dict[str, Any], expected: list[str]
) -> None:
    assert problems(conn, with_steps({"id": "tell", "notify": spec})) == expected


def test_a_valid_notify_step_has_no_problems_and_templated_type_is_checked_at_run_time(conn: Conn) -> None:
    assert (
        problems(conn, with_steps({"id": "tell", "notify": LEAD | {"type": "{{trigger.payload.t}}"}})) == []
    )


# --- reading and marking -----------------------------------------------------------------


def test_list_unread_count_and_marks(conn: Conn, tenant: str) -> None:
    first = notify_user(conn, tenant, "u1", "One")
    second = notify_user(conn, tenant, "u1", "Two", type="success")
    notify_user(conn, tenant, "u2", "Someone else's")
    listed = conn.execute("select * from conveyor.list_notifications('acme', 'u1')").fetchall()
    assert [(r["id"], r["title"], r["unread_count"]) for r in listed] == [
        (second, "Two", 2),
        (first, "One", 2),
    ]

    conn.execute("select * from conveyor.mark_notification('acme', 'u1', %s, 'read')", (first,))
    unread = conn.execute(
        "select id, unread_count from conveyor.list_notifications('acme', 'u1', true)"
    ).fetchall()
    assert unread == [{"id": second, "unread_count": 1}]

    conn.execute("select * from conveyor.mark_notification('acme', 'u1', %s, 'unread')", (first,))
    archived = conn.execute(
        "select * from conveyor.mark_notification('acme', 'u1', %s, 'archived')", (second,)
    ).fetchone()
    assert archived is not None and archived["archived_at"] is not None and archived["read_at"] is None
    listed = conn.execute("select id, unread_count from conveyor.list_notifications('acme', 'u1')").fetchall()
    assert listed == [{"id": first, "unread_count": 1}]

    marked = conn.execute("select conveyor.mark_all_read('acme', 'u1') as n").fetchone()
    assert marked == {"n": 1}
    listed = conn.execute(
        "select id, read_at, unread_count from conveyor.list_notifications('acme', 'u1')"
    ).fetchall()
    assert [(r["id"], r["read_at"] is not None, r["unread_count"]) for r in listed] == [(first, True, 0)]
    # u2's notification was not touched
    other = conn.execute("select read_at from conveyor.notifications where user_id = 'u2'").fetchone()
    assert other == {"read_at": None}


def test_an_expired_notification_is_neither_listed_nor_counted(conn: Conn, tenant: str) -> None:
    gone = notify_user(conn, tenant, "u1", "Gone")
    kept = notify_user(conn, tenant, "u1", "Kept", expires_in="1h")
    conn.execute(
        "update conveyor.notifications set expires_at = now() - interval '1 second' where notification_id = %s",
        (gone,),
    )
    listed = conn.execute("select id, unread_count from conveyor.list_notifications('acme', 'u1')").fetchall()
    assert listed == [{"id": kept, "unread_count": 1}]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "select * from conveyor.mark_notification('acme', 'u1', 1, 'seen')",
            "p_state: 'seen' is not a notification",
        ),
        ("select * from conveyor.list_notifications('acme', '')", "a user id is required"),
        ("select * from conveyor.list_notifications('acme', 'u1', false, 0)", "p_limit: 0 is not a number"),
        (
            "select conveyor.notify_user('acme', 'u1', '{\"title\": \"x\", \"kind\": 1}')",
            "conveyor.notify_user.kind: unknown notification field",
        ),
        (
            "select conveyor.notify_user('acme', 'u1', '{\"message\": \"x\"}')",
            "conveyor.notify_user.title: a notification needs a non-empty title",
        ),
        (
            'select conveyor.notify_user(\'acme\', \'u1\', \'{"title": "x", "priority": "max"}\')',
            "conveyor.notify_user.priority: unknown priority 'max'",
        ),
        (
            'select conveyor.notify_user(\'acme\', \'u1\', \'{"title": "x", "expires_in": "later"}\')',
            'invalid duration "later"',
        ),
    ],
)
def test_bad_arguments_are_refused_by_name(conn: Conn, tenant: str, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message.replace("(", r"\(")):
        conn.execute(call)


# --- isolation through the application role ----------------------------------------------


def test_a_user_reads_and_marks_only_their_own_notifications(app: Conn, two_tenants: Conn, acme: str) -> None:
    with acting_for(app, acme):
        mine = app.execute(
            "select conveyor.notify_user('acme', 'u2', '{\"title\": \"Mine\"}') as id"
        ).fetchone()
        assert mine is not None
        seeded = app.execute(
            "select notification_id from conveyor.notifications where user_id = 'u1'"
        ).fetchone()
        assert seeded is not None
        listed = app.execute("select id, title from conveyor.list_notifications('acme', 'u2')").fetchall()
        assert listed == [{"id": mine["id"], "title": "Mine"}]
    with pytest.raises(psycopg.errors.NoDataFound) as refused, acting_for(app, acme):
        app.execute(
            "select * from conveyor.mark_notification('acme', 'u2', %s, 'read')", (seeded["notification_id"],)
        )
    assert refused.value.diag.message_primary == (
        f"notification {seeded['notification_id']} is not a notification of user 'u2' in tenant 'acme'"
    )
    with acting_for(app, acme):
        assert app.execute("select conveyor.mark_all_read('acme', 'u2') as n").fetchone() == {"n": 1}
        still = app.execute("select read_at from conveyor.notifications where user_id = 'u1'").fetchone()
        assert still == {"read_at": None}


def test_another_tenant_can_neither_list_nor_mark(app: Conn, two_tenants: Conn, acme: str) -> None:
    globex_id = two_tenants.execute(
        "select notification_id from conveyor.notifications where tenant_id = 'globex'"
    ).fetchone()
    assert globex_id is not None
    other_tenant = "tenant 'globex' is not this session's tenant"
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=other_tenant), acting_for(app, acme):
        app.execute("select * from conveyor.list_notifications('globex', 'u1')")
    not_found = f"notification {globex_id['notification_id']} is not"
    with pytest.raises(psycopg.errors.NoDataFound, match=not_found), acting_for(app, acme):
        app.execute(
            "select * from conveyor.mark_notification('acme', 'u1', %s, 'archived')",
            (globex_id["notification_id"],),
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set"):
        app.execute("select conveyor.mark_all_read('globex', 'u1')")
    row = two_tenants.execute(
        "select read_at, archived_at from conveyor.notifications where tenant_id = 'globex'"
    ).fetchone()
    assert row == {"read_at": None, "archived_at": None}
