"""Notification deliveries through the action queue: what a delivery's message carries, its
write-back (conveyor.write_back_deliveries) applied exactly once, retries with a backoff,
permanent failures and dead letters, read_actions' redelivery check, and that a batch of
step results and a workflow's actions go on as before beside them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import archived, execution, flow, start, write_back
from tests.sql.notification_helpers import channels, deliveries, delivery_messages, notify, platform_users

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def queued(conn: Conn, tenant: str) -> dict[str, Any]:
    """One email delivery of ann's, queued: its row and its message."""
    platform_users(conn, [(tenant, "ann", "ann@acme.test", None, None)])
    channels(conn, tenant)
    notify(conn, tenant, "ann", {"title": "Hello", "message": "there", "action_url": "https://crm.test/x"})
    [delivery] = deliveries(conn)
    [message] = delivery_messages(conn)
    return {"delivery": delivery, "message": message}


def write_deliveries(conn: Conn, *results: dict[str, Any]) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.write_back_deliveries(%s)", (Jsonb(list(results)),)
    ).fetchall()


def test_a_delivery_message_carries_what_email_send_takes_and_names_its_delivery(
    queued: dict[str, Any],
) -> None:
    delivery, message = queued["delivery"], queued["message"]
    assert message["msg_id"] == delivery["msg_id"]
    assert message["message"] == {
        "delivery_id": delivery["delivery_id"],
        "tenant_id": "acme",
        "action": "email.send",
        "connection": "mail",
        "input": {"to": "ann@acme.test", "subject": "Hello", "text": "there\n\nhttps://crm.test/x"},
        "idempotency_key": f"notification-delivery:{delivery['delivery_id']}",
        "attempt": 1,
        "timeout_s": 30,
    }
    assert "step_run_id" not in message["message"]


def test_a_successful_result_marks_it_sent_once_and_archives_the_message(
    conn: Conn, queued: dict[str, Any]
) -> None:
    msg_id, delivery_id = queued["message"]["msg_id"], queued["delivery"]["delivery_id"]
    result = {
        "msg_id": msg_id,
        "delivery_id": delivery_id,
        "ok": True,
        "output": {"accepted": ["ann@acme.test"]},
    }
    assert write_deliveries(conn, result) == [
        {"msg_id": msg_id, "delivery_id": delivery_id, "outcome": "applied"}
    ]
    [row] = deliveries(conn)
    assert (row["status"], row["output"], row["finished_at"] is not None) == (
        "sent",
        {"accepted": ["ann@acme.test"]},
        True,
    )
    assert archived(conn) == [msg_id]
    # the same result again (a duplicate, a late runner) changes nothing
    failed = {"msg_id": msg_id, "delivery_id": delivery_id, "ok": False, "error": {"message": "late"}}
    assert write_deliveries(conn, failed)[0]["outcome"] == "ignored"
    assert deliveries(conn)[0]["status"] == "sent"


def test_a_retryable_failure_queues_the_next_attempt_after_a_backoff(
    conn: Conn, queued: dict[str, Any]
) -> None:
    msg_id, delivery_id = queued["message"]["msg_id"], queued["delivery"]["delivery_id"]
    before = datetime.now(UTC)
    error = {"message": "SMTP 127.0.0.1:2525 failed", "type": "connection"}
    result = {"msg_id": msg_id, "delivery_id": delivery_id, "ok": False, "retryable": True, "error": error}
    assert write_deliveries(conn, result)[0]["outcome"] == "applied"
    [row] = deliveries(conn)
    assert (row["status"], row["attempts"], row["error"]["message"]) == ("queued", 2, error["message"])
    [message] = delivery_messages(conn)
    assert message["msg_id"] == row["msg_id"] != msg_id
    assert message["message"]["attempt"] == 2
    assert message["vt"] >= before + timedelta(seconds=20)  # 30 s, +-20% jitter
    # attempts used up (setting conveyor.notification_delivery_attempts): failed
    conn.execute("set conveyor.notification_delivery_attempts = 2")
    again = {
        "msg_id": row["msg_id"],
        "delivery_id": delivery_id,
        "ok": False,
        "retryable": True,
        "error": error,
    }
    write_deliveries(conn, again)
    [row] = deliveries(conn)
    assert (row["status"], row["error"]["attempt"]) == ("failed", 2)
    assert delivery_messages(conn) == []
    conn.execute("reset conveyor.notification_delivery_attempts")


def test_a_permanent_failure_fails_it_at_once(conn: Conn, queued: dict[str, Any]) -> None:
    msg_id, delivery_id = queued["message"]["msg_id"], queued["delivery"]["delivery_id"]
    error = {"message": "every recipient was refused", "type": "smtp_refused"}
    write_deliveries(
        conn, {"msg_id": msg_id, "delivery_id": delivery_id, "ok": False, "retryable": False, "error": error}
    )
    [row] = deliveries(conn)
    assert (row["status"], row["error"]["type"], row["attempts"]) == ("failed", "smtp_refused", 1)


def test_a_dead_lettered_delivery_fails_and_its_message_is_kept(conn: Conn, queued: dict[str, Any]) -> None:
    msg_id, delivery_id = queued["message"]["msg_id"], queued["delivery"]["delivery_id"]
    result = {
        "msg_id": msg_id, "delivery_id": delivery_id, "ok": False, "dead_letter": "max_deliveries",
        "error": {"message": "delivered 6 times"},
    }  # fmt: skip
    assert write_deliveries(conn, result)[0]["outcome"] == "dead_lettered"
    [row] = deliveries(conn)
    assert (row["status"], row["error"]["dead_letter"]) == ("failed", "max_deliveries")
    [dead] = conn.execute("select * from conveyor.dead_letters").fetchall()
    assert (dead["tenant_id"], dead["msg_id"], dead["reason"], dead["step_run_id"]) == (
        "acme", msg_id, "max_deliveries", None
    )  # fmt: skip
    assert dead["message"]["delivery_id"] == delivery_id


def test_a_result_the_database_refuses_fails_its_delivery_alone(conn: Conn, queued: dict[str, Any]) -> None:
    msg_id, delivery_id = queued["message"]["msg_id"], queued["delivery"]["delivery_id"]
    refused = {
        "msg_id": msg_id,
        "delivery_id": delivery_id,
        "ok": False,
        "retryable": True,
        "retry_after_s": "soon",
    }
    rows = write_deliveries(conn, refused)
    assert rows[0]["outcome"] == "dead_lettered"
    [row] = deliveries(conn)
    assert row["status"] == "failed" and row["error"]["type"] == "result_refused"
    assert archived(conn) == [msg_id]


def test_a_redelivered_delivery_message_is_checked_against_its_delivery(
    conn: Conn, queued: dict[str, Any]
) -> None:
    def read() -> list[dict[str, Any]]:
        rows = conn.execute("select * from conveyor.read_actions(10, 30, 30)").fetchall()
        conn.execute("update pgmq.q_conveyor_actions set vt = now() - interval '1 second'")
        return rows

    assert [r["dead_letter"] for r in read()] == [None]
    assert [r["dead_letter"] for r in read()] == [None]  # a redelivery, still awaited
    conn.execute("update conveyor.notification_deliveries set status = 'sent'")
    assert [r["dead_letter"] for r in read()] == ["step_run_gone"]


def test_step_actions_and_deliveries_share_the_queue_and_step_results_are_unchanged(
    conn: Conn, tenant: str, queued: dict[str, Any]
) -> None:
    execution_id = start(conn, tenant, flow(conn, tenant), {"payload": {"amount": 5}})
    step_message = next(
        m
        for m in conn.execute("select * from pgmq.q_conveyor_actions").fetchall()
        if "step_run_id" in m["message"]
    )
    rows = write_back(
        conn, {"msg_id": step_message["msg_id"], "step_run_id": step_message["message"]["step_run_id"], "ok": True,
               "output": {"status": 200}},
    )  # fmt: skip
    assert rows[0]["outcome"] == "applied"
    assert execution(conn, execution_id)["status"] == "completed"
    assert deliveries(conn)[0]["status"] == "queued"  # the delivery waits for its own result


# --- the application API, tenant-checked ---------------------------------------------------

OTHER_TENANT_CALLS = [
    "select conveyor.save_notification_template('globex', 'x', '{\"in_app\": {\"title\": \"x\"}}')",
    "select * from conveyor.list_notification_templates('globex')",
    "select conveyor.delete_notification_template('globex', 'welcome')",
    "select conveyor.set_notification_preferences('globex', 'u1', '*', '{}')",
    "select * from conveyor.get_notification_preferences('globex', 'u1')",
    "select conveyor.set_notification_channel('globex', 'email', 'smtp-main')",
]


@pytest.mark.parametrize("call", OTHER_TENANT_CALLS)
def test_the_application_may_not_act_for_another_tenant(
    app: Conn, two_tenants: Conn, acme: str, call: str
) -> None:
    from tests.sql.tenant_context import acting_for

    with (
        pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="tenant 'globex' is not this session's tenant"
        ),
        acting_for(app, acme),
    ):
        app.execute(call)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set"):
        app.execute(call)


def test_the_application_manages_its_own_templates_preferences_and_channels(
    app: Conn, two_tenants: Conn, acme: str
) -> None:
    from tests.sql.tenant_context import acting_for

    with acting_for(app, acme):
        app.execute(
            "select conveyor.save_notification_template('acme', 'hello', '{\"in_app\": {\"title\": \"Hi\"}}')"
        )
        mine = app.execute(
            "select slug from conveyor.list_notification_templates('acme') where source = 'tenant'"
        )
        assert [r["slug"] for r in mine] == ["hello", "welcome"]
        app.execute(
            "select conveyor.set_notification_preferences('acme', 'u1', 'deals', '{\"frequency\": \"never\"}')"
        )
        prefs = app.execute(
            "select category from conveyor.get_notification_preferences('acme', 'u1')"
        ).fetchall()
        assert [r["category"] for r in prefs] == ["*", "deals", None]
        app.execute("select conveyor.set_notification_channel('acme', 'email', 'smtp-main')")
        app.execute(
            'select conveyor.notify_user(\'acme\', \'u1\', \'{"template": "hello", "category": "deals"}\')'
        )
        # row-level security: the application sees its own tenant's rows only
        tenants = app.execute("select distinct tenant_id from conveyor.notification_deliveries").fetchall()
        assert tenants == [{"tenant_id": "acme"}]
    globex = two_tenants.execute(
        "select count(*) as n from conveyor.notification_templates where tenant_id = 'globex'"
    )
    assert globex.fetchone() == {"n": 1}


def test_a_dry_run_of_a_notify_step_sends_and_keeps_nothing(conn: Conn, tenant: str) -> None:
    from tests.sql.interpreter_helpers import dry_run

    platform_users(conn, [(tenant, "ann", "ann@acme.test", None, None)])
    channels(conn, tenant)
    doc = {
        "slug": "tell",
        "name": "Tell",
        "trigger": {"event": "crm.deal.won"},
        "steps": [{"id": "tell", "notify": {"to": "ann", "template": "deal_won", "data": {"deal": "D"}}}],
    }
    result = dry_run(conn, doc, {"event_type": "crm.deal.won", "payload": {}})
    assert result["status"] == "completed", result
    assert deliveries(conn) == [] and delivery_messages(conn) == []
    assert conn.execute("select count(*) as n from conveyor.notifications").fetchone() == {"n": 0}
