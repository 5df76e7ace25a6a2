"""A campaign runs on the engine end to end: 10 enrollments through a 3-step email sequence,
performed by a real runner against a real SMTP server (aiosmtpd), with short delays; every
message has Date and Message-ID, the sends keep the tenant's rate, the enrollments complete
and the counters say so."""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.e2e.helpers import Conn, setup_tenant
from tests.e2e.mailbox import Mailbox
from tests.runner.helpers import wait_for

pytestmark = pytest.mark.slow


CAMPAIGN: dict[str, Any] = {
    "slug": "welcome",
    "name": "Welcome",
    "audience": "contact",
    "connection": "mail",
    "send_window": {"hours": "00:00-23:59", "timezone": "contact"},
    "send_rate": {"per_minute": 600},
    "steps": [
        {"id": "hello", "channel": "email", "subject": "Hi {{contact.name}}", "text": "Welcome, {{contact.name}}"},
        {"id": "nudge", "channel": "email", "delay": "2s", "subject": "Still there, {{contact.name}}?", "text": "Nudge"},
        {"id": "last", "channel": "email", "delay": "2s", "subject": "Last one", "html": "<p>Bye {{contact.name}}</p>"},
    ],
}  # fmt: skip


def test_ten_enrollments_receive_a_three_step_sequence(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    box, port = mailbox
    tenant = setup_tenant(conn)
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text, name text, email text, timezone text)"
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    conn.execute(
        "insert into public.contacts select g, %s, 'c' || g, 'c' || g || '@example.com', 'Pacific/Auckland'"
        " from generate_series(1, 10) as g",
        (tenant,),
    )
    conn.execute(
        "insert into conveyor.connections (tenant_id, name, kind, config) values (%s, 'mail', 'smtp', %s)",
        (
            tenant,
            Jsonb(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "news@acme.test",
                    "unsubscribe_url": "https://hooks.acme.test",
                }
            ),
        ),
    )
    conn.execute("select * from conveyor.apply_campaign(%s, %s)", (tenant, Jsonb(CAMPAIGN)))
    runner = runners()
    rows = conn.execute(
        "select * from conveyor.enroll_campaign(%s, 'welcome', %s)", (tenant, [str(i) for i in range(1, 11)])
    ).fetchall()
    assert [r["result"] for r in rows] == ["enrolled"] * 10
    again = conn.execute(
        "select result from conveyor.enroll_campaign(%s, 'welcome', array['3'])", (tenant,)
    ).fetchall()
    assert again == [{"result": "already enrolled"}]

    received = wait_for(lambda: box.received if len(box.received) >= 30 else None, timeout=60)
    assert len(received) == 30
    by_contact: dict[str, list[str]] = {}
    for _, recipients, message in received:
        assert message["Date"] and message["Message-ID"]
        assert str(message["List-Unsubscribe"]).strip().startswith("<https://hooks.acme.test/u/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        by_contact.setdefault(recipients[0], []).append(str(message["Subject"]))
    assert by_contact["c4@example.com"] == ["Hi c4", "Still there, c4?", "Last one"]
    assert len(by_contact) == 10
    # each contact's steps are at least the delay apart
    first = {r[0]: t for t, r, m in received if str(m["Subject"]).startswith("Hi")}
    second = {r[0]: t for t, r, m in received if str(m["Subject"]).startswith("Still")}
    assert all(second[k] - first[k] >= 1.9 for k in first)

    done = wait_for(
        lambda: (
            (
                conn.execute(
                    "select count(*) as n from conveyor.campaign_enrollments where status = 'completed'"
                ).fetchone()
                or {"n": 0}
            )["n"]
            == 10
            or None
        ),
        timeout=30,
    )
    assert done
    [total] = conn.execute(
        "select * from conveyor.campaign_stats(%s, 'welcome') where step_key = ''", (tenant,)
    ).fetchall()
    assert (total["enrolled"], total["completed"], total["sent"]) == (10, 10, 30)
    assert runner.stop() == 0


def test_a_reply_and_a_bounce_stop_their_sequences_26_messages(
    conn: Conn, mailbox: tuple[Mailbox, int], runners: Any
) -> None:
    """The acceptance count: 10 enrollments x 3 emails, one contact replies after the first
    email and one bounces, so 30 - 2 - 2 = 26 messages; the reply and the bounce are
    recorded by conveyor.record_email_event (migration 0034) as its webhooks do."""
    box, port = mailbox
    tenant = setup_tenant(conn)
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text, name text, email text, timezone text)"
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    conn.execute(
        "insert into public.contacts select g, %s, 'c' || g, 'c' || g || '@example.com', 'UTC'"
        " from generate_series(1, 10) as g",
        (tenant,),
    )
    conn.execute(
        "insert into conveyor.connections (tenant_id, name, kind, config) values (%s, 'mail', 'smtp', %s)",
        (
            tenant,
            Jsonb(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "security": "none",
                    "from": "news@acme.test",
                    "unsubscribe_url": "https://hooks.acme.test",
                }
            ),
        ),
    )
    slow = {**CAMPAIGN, "steps": [{**s, "delay": "4s"} if "delay" in s else s for s in CAMPAIGN["steps"]]}
    conn.execute("select * from conveyor.apply_campaign(%s, %s)", (tenant, Jsonb(slow)))
    runner = runners()
    rows = conn.execute(
        "select * from conveyor.enroll_campaign(%s, 'welcome', %s)", (tenant, [str(i) for i in range(1, 11)])
    ).fetchall()
    assert all(r["result"] == "enrolled" for r in rows)
    wait_for(lambda: box.received if len(box.received) >= 10 else None, timeout=30)
    for contact, kind in (("1", "replied"), ("2", "bounced")):
        [message] = [m for _, r, m in box.received if r == [f"c{contact}@example.com"]]
        # the runner writes the send back (and its email_messages row) after the SMTP server took it
        wait_for(
            lambda m=message: conn.execute(
                "select 1 from conveyor.email_messages where message_id = %s", (m["Message-ID"],)
            ).fetchone(),
            timeout=30,
        )
        recorded = conn.execute(
            "select conveyor.record_email_event(%s, %s, %s, now()) as r",
            (tenant, message["Message-ID"], kind),
        ).fetchone()
        assert recorded is not None and recorded["r"]["outcome"] == "recorded"
    finished = wait_for(
        lambda: (
            rows
            if len(
                rows := conn.execute(
                    "select entity_id, status, stop_reason from conveyor.campaign_enrollments"
                    " where status <> 'active' order by entity_id::int"
                ).fetchall()
            )
            == 10
            else None
        ),
        timeout=60,
    )
    time.sleep(1)  # nothing more arrives
    assert len(box.received) == 26
    assert finished[0] == {"entity_id": "1", "status": "stopped", "stop_reason": "replied"}
    assert finished[1] == {"entity_id": "2", "status": "stopped", "stop_reason": "bounced"}
    assert [f["status"] for f in finished[2:]] == ["completed"] * 8
    for address in ("c1@example.com", "c2@example.com"):
        assert [str(m["Subject"]) for _, r, m in box.received if r == [address]] == [f"Hi {address[:2]}"]
    [total] = conn.execute(
        "select * from conveyor.campaign_stats(%s, 'welcome') where step_key = ''", (tenant,)
    ).fetchall()
    assert (total["enrolled"], total["completed"], total["stopped"], total["replied"], total["bounced"]) == (
        10, 8, 2, 1, 1,
    )  # fmt: skip
    assert runner.stop() == 0
