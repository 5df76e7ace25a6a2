"""Notification email through a real runner: a notification's email delivery is a message of
the action queue, performed by the runner's email.send against a real SMTP server
(aiosmtpd) and written back as sent; one held by do-not-disturb is released by the tick
the runner runs when it falls due, not before."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.helpers import Conn, setup_tenant
from tests.e2e.mailbox import Mailbox
from tests.runner.helpers import wait_for
from tests.sql.notification_helpers import channels, deliveries, notify, platform_users, prefer

pytestmark = pytest.mark.slow


def test_a_notification_email_lands_in_the_mailbox_and_its_delivery_is_sent(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    box, port = mailbox
    tenant = setup_tenant(conn)
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, "Europe/Berlin")])
    channels(conn, tenant, port=port)
    runner = runners()
    notify(
        conn,
        tenant,
        "u1",
        {"template": "deal_won", "data": {"deal": "<Big & Co>", "url": "https://crm.test/d/1"}},
    )
    [(_, recipients, message)] = wait_for(lambda: box.received or None, timeout=30)
    assert recipients == ["ann@acme.test"]
    assert message["Subject"] == "Deal won: <Big & Co>"
    assert message["From"] == "bell@acme.test"
    html = message.get_body(("html",))
    assert html is not None and "&lt;Big &amp; Co&gt;" in html.get_content()
    text = message.get_body(("plain",))
    assert text is not None and "The deal <Big & Co> was won." in text.get_content()
    [delivery] = wait_for(lambda: [d for d in deliveries(conn) if d["status"] == "sent"] or None, timeout=30)
    assert delivery["output"]["accepted"] == ["ann@acme.test"]
    assert message["X-Conveyor-Idempotency-Key"] == f"notification-delivery:{delivery['delivery_id']}"
    assert runner.stop() == 0


def test_an_email_held_by_do_not_disturb_is_sent_when_it_ends_not_before(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    box, port = mailbox
    tenant = setup_tenant(conn)
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, "UTC")])
    channels(conn, tenant, port=port)
    until = datetime.fromtimestamp(time.time() + 3, UTC)
    prefer(conn, tenant, "u1", "*", {"dnd_until": until.isoformat()})
    runner = runners(CONVEYOR_POLL_INTERVAL="30")
    notify(conn, tenant, "u1", {"title": "Later", "message": "after the quiet"})
    notify(conn, tenant, "u1", {"title": "Now", "message": "it is on fire", "priority": "critical"})
    [(first_at, _, first)] = wait_for(lambda: box.received or None, timeout=30)
    assert first["Subject"] == "Now" and first_at < until.timestamp()
    [_, (second_at, _, second)] = wait_for(
        lambda: box.received if len(box.received) == 2 else None, timeout=30
    )
    assert second["Subject"] == "Later"
    # released by the tick the runner ran when the hold fell due (its poll is 30 s away)
    assert until.timestamp() <= second_at < until.timestamp() + 2.0
    wait_for(lambda: [d["status"] for d in deliveries(conn)] == ["sent", "sent"] or None, timeout=30)
    assert runner.stop() == 0


def test_a_notification_sms_goes_through_the_runner_s_sms_send(conn: Conn, runners: Any) -> None:
    from urllib.parse import parse_qs

    from conveyor import connections as conns
    from conveyor.secrets import SecretBox
    from tests.e2e.helpers import KEY
    from tests.runner.helpers import Reply, local_http

    with local_http() as provider:
        provider.routes["/2010-04-01/Accounts/AC1/Messages.json"] = Reply(
            201, {"sid": "SM1", "status": "queued", "to": "+15551", "from": "+15550000"}
        )
        tenant = setup_tenant(conn)
        platform_users(conn, [(tenant, "u1", None, "+15551", None)])
        conns.add(
            conn, SecretBox(KEY), tenant_id=tenant, name="text", kind="twilio",
            config={"account_sid": "AC1", "from": "+15550000", "base_url": provider.url("")},
            secret={"auth_token": "tok"},
        )  # fmt: skip
        conn.execute("select conveyor.set_notification_channel(%s, 'sms', 'text')", (tenant,))
        prefer(conn, tenant, "u1", "*", {"channels": ["in_app", "sms"]})
        runner = runners()
        notify(conn, tenant, "u1", {"template": "task_assigned", "data": {"task": "Call Ann"}})
        [request] = wait_for(lambda: provider.received or None, timeout=30)
        form = parse_qs(request.body.decode())
        assert form == {"To": ["+15551"], "From": ["+15550000"], "Body": ["Task: Call Ann (due no due date)"]}
        [delivery] = wait_for(
            lambda: [d for d in deliveries(conn) if d["status"] == "sent"] or None, timeout=30
        )
        assert {k.lower(): v for k, v in request.headers.items()}[
            "i-twilio-idempotency-token"
        ] == f"notification-delivery:{delivery['delivery_id']}"
        assert delivery["output"]["sid"] == "SM1"
        assert runner.stop() == 0


def test_a_workflow_s_notify_step_emails_through_the_runner(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    from tests.e2e.helpers import all_final, emit, publish

    box, port = mailbox
    tenant = setup_tenant(conn)
    platform_users(conn, [(tenant, "owner-7", "owner@acme.test", None, None)])
    channels(conn, tenant, port=port)
    step = {
        "notify": {
            "to": "{{trigger.payload.owner}}",
            "template": "task_assigned",
            "data": {"task": "Call {{trigger.payload.name}}", "assigned_by": "Conveyor"},
        }
    }
    publish(conn, tenant, step)
    runner = runners()
    emit(conn, tenant, {"owner": "owner-7", "name": "Ann <CEO>"})
    [execution] = wait_for(lambda: all_final(conn, 1), timeout=30)
    assert execution["status"] == "completed", execution["error"]
    [(_, recipients, message)] = wait_for(lambda: box.received or None, timeout=30)
    assert (recipients, message["Subject"]) == (["owner@acme.test"], "Task assigned: Call Ann <CEO>")
    html = message.get_body(("html",))
    assert html is not None and "Call Ann &lt;CEO&gt;" in html.get_content()
    assert runner.stop() == 0


def test_a_due_digest_is_emailed_by_the_runner_s_tick(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    box, port = mailbox
    tenant = setup_tenant(conn)
    platform_users(conn, [(tenant, "u1", "ann@acme.test", None, "Asia/Tokyo")])
    channels(conn, tenant, port=port)
    prefer(conn, tenant, "u1", "*", {"frequency": "daily_digest"})
    for title in ("First", "Second <b>"):
        notify(conn, tenant, "u1", {"title": title, "message": "m"})
    runner = runners()
    time.sleep(1.0)
    assert box.received == []  # collected, not sent
    # as if the digest time came now
    conn.execute("update conveyor.notification_digests set due_at = clock_timestamp() + interval '1 second'")
    [(_, recipients, message)] = wait_for(lambda: box.received or None, timeout=30)
    assert (recipients, message["Subject"]) == (["ann@acme.test"], "Your daily digest: 2 notification(s)")
    html = message.get_body(("html",))
    assert html is not None and "First" in html.get_content() and "Second &lt;b&gt;" in html.get_content()
    assert runner.stop() == 0
