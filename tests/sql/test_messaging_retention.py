"""Messaging history is pruned with the tenant's retention (sql/retention_messaging.sql):
notifications, their deliveries and digests, tracked email messages (with their events),
finished campaign enrollments; send-slot counts a day past. Newer rows, running
enrollments and the campaigns' counters stay; each kind in batches."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.test_campaigns import CAMPAIGN, apply, enroll, setup

Conn = psycopg.Connection[dict[str, Any]]

OLD = "now() - interval '10 days'"


def count(conn: Conn, table: str) -> int:
    row = conn.execute(f"select count(*) as n from conveyor.{table}").fetchone()
    assert row is not None
    return int(row["n"])


def seed(conn: Conn) -> None:
    setup(conn, contacts=4)
    conn.execute("update conveyor.tenants set retention_days = 7 where tenant_id = 'acme'")
    apply(conn, CAMPAIGN)
    rows = enroll(conn, ["1", "2", "3", "4"])
    # 1 and 2 finished long ago, 3 finished now, 4 still running (enrolled long ago)
    for row in rows[:3]:
        conn.execute("select conveyor.control_enrollment('acme', %s, 'cancel')", (row["enrollment_id"],))
    conn.execute(
        f"update conveyor.campaign_enrollments set finished_at = {OLD} where entity_id in ('1', '2')"
    )
    conn.execute(f"update conveyor.campaign_enrollments set enrolled_at = {OLD} where entity_id = '4'")
    for age in (OLD, OLD, "now()"):
        conn.execute(
            "insert into conveyor.notifications (tenant_id, user_id, title, created_at)"
            f" values ('acme', 'u1', 'Hi', {age})"
        )
        conn.execute(
            "insert into conveyor.notification_deliveries (tenant_id, notification_id, user_id, channel, status,"
            f" created_at, finished_at) values ('acme', 1, 'u1', 'email', 'sent', {age}, {age})"
        )
        conn.execute(
            "insert into conveyor.notification_digests (tenant_id, user_id, frequency, due_at, status, created_at)"
            f" values ('acme', 'u1', 'daily_digest', {age} + random() * interval '1 hour', 'sent', {age})"
        )
        message = conn.execute(
            "insert into conveyor.email_messages (tenant_id, to_address, message_id, sent_at)"
            f" values ('acme', 'a@x.test', '<' || gen_random_uuid() || '@x>', {age}) returning id"
        ).fetchone()
        assert message is not None
        conn.execute(
            "insert into conveyor.email_events (tenant_id, email_message_id, event_key, kind, occurred_at)"
            " values ('acme', %s, gen_random_uuid()::text, 'delivered', now())",
            (message["id"],),
        )
    # a digest still open, however old, is kept
    conn.execute(
        "insert into conveyor.notification_digests (tenant_id, user_id, frequency, due_at, created_at)"
        f" values ('acme', 'u2', 'daily_digest', now(), {OLD})"
    )
    conn.execute(
        "insert into conveyor.campaign_send_slots (tenant_id, key, minute, used) values"
        " ('acme', 'email', date_trunc('minute', now()) - interval '3 days', 5),"
        " ('acme', 'email', date_trunc('minute', now()) + interval '1 hour', 5)"
    )


def test_old_messaging_history_goes_in_batches_and_the_rest_stays(conn: Conn) -> None:
    seed(conn)
    first = conn.execute("select conveyor.prune_history(now(), 1) as r").fetchone()
    assert first is not None
    assert {k: first["r"][k] for k in (
        "notifications", "notification_deliveries", "notification_digests", "email_messages",
        "campaign_enrollments", "campaign_send_slots",
    )} == {
        "notifications": 1, "notification_deliveries": 1, "notification_digests": 1, "email_messages": 1,
        "campaign_enrollments": 1, "campaign_send_slots": 1,
    }  # fmt: skip
    conn.execute("select conveyor.prune_history(now(), 1000)")
    assert count(conn, "notifications") == 1
    assert count(conn, "notification_deliveries") == 1
    assert count(conn, "notification_digests") == 2  # the recent one and the open one
    assert count(conn, "email_messages") == 1
    assert count(conn, "email_events") == 1  # the pruned messages' events went with them
    kept = conn.execute(
        "select entity_id, status from conveyor.campaign_enrollments order by entity_id"
    ).fetchall()
    assert kept == [{"entity_id": "3", "status": "cancelled"}, {"entity_id": "4", "status": "active"}]
    slots = conn.execute(
        "select minute > now() - interval '1 day' as recent from conveyor.campaign_send_slots"
    )
    assert {r["recent"] for r in slots} == {True}
    stats = conn.execute(
        "select enrolled from conveyor.campaign_stats('acme', 'welcome') where step_key = ''"
    ).fetchone()
    assert stats == {"enrolled": 4}


def test_a_tenant_with_a_longer_retention_keeps_its_messaging_history(conn: Conn) -> None:
    seed(conn)
    conn.execute("update conveyor.tenants set retention_days = 30 where tenant_id = 'acme'")
    result = conn.execute("select conveyor.prune_history(now(), 1000) as r").fetchone()
    assert result is not None
    assert result["r"]["notifications"] == 0 and result["r"]["email_messages"] == 0
    assert result["r"]["campaign_enrollments"] == 0
    assert count(conn, "notifications") == 3
