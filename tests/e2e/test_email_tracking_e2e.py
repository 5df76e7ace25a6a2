"""Email tracking end to end: a real send through the runner to a real aiosmtpd server,
its row, its headers, a reply resuming a workflow waiting on email.message.replied by
tag, and one-click unsubscribe over real HTTP to `conveyor serve` skipping the next send."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import Message
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from conveyor import connections as conns
from conveyor.serve import ServeSettings, serve_in_thread
from tests.e2e.helpers import executions, setup_tenant
from tests.runner.helpers import wait_for

pytestmark = pytest.mark.slow

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    with serve_in_thread(ServeSettings(db_url, "127.0.0.1", 0, pool_size=2)) as running:
        yield running.url


@pytest.fixture
def mailbox() -> Iterator[tuple[int, list[Message]]]:
    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    received: list[Message] = []

    class Mailbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    port = free_port()
    controller = Controller(Mailbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


CAMPAIGN = {
    "slug": "nurture",
    "name": "Nurture",
    "trigger": {"event": "crm.contact.created"},
    "steps": [
        {
            "id": "hello",
            "action": "email.send",
            "connection": "mail",
            "with": {
                "to": "{{trigger.payload.email}}",
                "subject": "Hello {{trigger.payload.name}}",
                "text": "Hi!",
                "list_unsubscribe": True,
                "tags": {"campaign_id": "c1", "enrollment_id": "{{trigger.payload.enrollment}}"},
            },
        },
        {
            "id": "await_reply",
            "wait_for_event": {
                "event": "email.message.replied",
                "match": {"payload.tags.enrollment_id": "{{trigger.payload.enrollment}}"},
                "timeout": "1h",
            },
            "on_event": "replied",
            "on_timeout": None,
        },
        {"id": "replied", "set": {"reply_from": "{{steps.await_reply.output.event.payload.details.from}}"}},
    ],
}


def final(conn: Conn, count: int) -> list[dict[str, Any]] | None:
    rows = executions(conn)
    done = [r for r in rows if r["status"] in ("completed", "failed")]
    return rows if len(rows) == count and len(done) == count else None


def test_send_reply_unsubscribe_and_the_next_send_skipped(
    conn: Conn, runners: Any, server: str, mailbox: tuple[int, list[Message]]
) -> None:
    port, received = mailbox
    tenant = setup_tenant(conn)
    conns.add(
        conn, None, tenant_id=tenant, name="mail", kind="smtp",
        config={
            "host": "127.0.0.1", "port": port, "security": "none", "from": "news@acme.test",
            "unsubscribe_url": server, "unsubscribe_mailto": "unsub@acme.test",
        },
        secret={},
    )  # fmt: skip
    conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(CAMPAIGN)))
    payload = {"email": "Ann@x.test", "name": "Ann", "enrollment": "en-1"}
    conn.execute("select conveyor.emit(%s, 'crm.contact.created', %s)", (tenant, Jsonb(payload)))
    runner = runners()

    [message] = wait_for(lambda: received if received else None, timeout=30)
    row = wait_for(lambda: conn.execute("select * from conveyor.email_messages").fetchone(), timeout=30)
    assert row["message_id"] == message["Message-ID"] and message["Date"]
    assert (row["to_address"], row["subject"], row["status"]) == ("Ann@x.test", "Hello Ann", "sent")
    assert row["tags"] == {"campaign_id": "c1", "enrollment_id": "en-1"}
    token = row["unsubscribe_token"]
    assert len(token) >= 43
    assert (
        str(message["List-Unsubscribe"]).strip()
        == f"<{server}/u/{token}>, <mailto:unsub@acme.test?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # the reply names our Message-ID: the waiting execution resumes on its tag
    wait_for(lambda: executions(conn)[0]["status"] == "waiting" or None, timeout=30)
    result = conn.execute(
        "select conveyor.record_email_reply(%s, %s, %s, %s) as r",
        (tenant, message["Message-ID"], "<older@elsewhere.test>", Jsonb({"from": "Ann@x.test"})),
    ).fetchone()
    assert result is not None and result["r"]["outcome"] == "recorded"
    [execution] = wait_for(lambda: final(conn, 1), timeout=30)
    assert execution["status"] == "completed" and execution["vars"] == {"reply_from": "Ann@x.test"}

    # GET shows a page and changes nothing; the one-click POST unsubscribes, once
    page = httpx.get(f"{server}/u/{token}")
    assert page.status_code == 200 and "Ann@x.test" in page.text and "method=post" in page.text
    assert conn.execute("select count(*) as n from conveyor.email_suppressions").fetchone() == {"n": 0}
    one_click = httpx.post(f"{server}/u/{token}", content=b"List-Unsubscribe=One-Click")
    assert one_click.status_code == 200 and "no more" in one_click.text
    assert httpx.post(f"{server}/u/{token}").status_code == 200
    assert httpx.post(f"{server}/u/{'x' * 43}").status_code == 404
    [suppressed] = conn.execute("select address, reason from conveyor.email_suppressions").fetchall()
    assert suppressed == {"address": "ann@x.test", "reason": "unsubscribed"}
    assert (
        len(
            conn.execute(
                "select * from conveyor.events where event_type = 'email.message.unsubscribed'"
            ).fetchall()
        )
        == 1
    )

    # the next list_unsubscribe send to that address is skipped, with the reason logged
    conn.execute(
        "select conveyor.emit(%s, 'crm.contact.created', %s)",
        (tenant, Jsonb(payload | {"enrollment": "en-2"})),
    )

    def second_waits() -> bool | None:
        rows = executions(conn)
        return (len(rows) == 2 and rows[1]["current_step"] == "await_reply") or None

    assert wait_for(second_waits, timeout=30)
    [skipped] = conn.execute(
        "select r.output from conveyor.step_runs as r where r.step_id = 'hello' order by r.step_run_id offset 1"
    ).fetchall()
    assert skipped["output"]["skipped"] is True and skipped["output"]["suppressed"] == {
        "ann@x.test": "unsubscribed"
    }
    [log] = conn.execute(
        "select message from conveyor.execution_logs where message like '%skipped%'"
    ).fetchall()
    assert "ann@x.test (unsubscribed)" in log["message"]
    assert len(received) == 1
    assert conn.execute("select count(*) as n from conveyor.email_messages").fetchone() == {"n": 1}
    assert runner.stop() == 0
