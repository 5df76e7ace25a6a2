"""Digests: a user's emails of a digest category are collected per period and sent as one
email at the user's digest time in their time zone (daily) or on their day (weekly),
listing every item (title, message, link) HTML-escaped; nothing is sent when there is
nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.sql.notification_helpers import (
    channels,
    deliveries,
    delivery_messages,
    notify,
    platform_users,
    prefer,
    tick,
)

Conn = psycopg.Connection[dict[str, Any]]


def digests(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.notification_digests order by digest_id").fetchall()


def next_local(zone: str, hour: int, minute: int, weekday: int | None = None) -> datetime:
    """The next local hour:minute (on ISO weekday, when given) after now, as an instant."""
    local = datetime.now(UTC).astimezone(ZoneInfo(zone))
    for days in range(9):
        day = (local + timedelta(days=days)).date()
        if weekday is not None and day.isoweekday() != weekday:
            continue
        candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))
        if candidate > local:
            return candidate.astimezone(UTC)
    raise AssertionError


@pytest.fixture
def ann(conn: Conn, tenant: str) -> str:
    platform_users(conn, [(tenant, "ann", "ann@acme.test", None, "America/New_York")])
    channels(conn, tenant)
    return "ann"


def test_a_daily_digest_is_one_email_at_the_user_s_local_time_listing_every_item_escaped(
    conn: Conn, tenant: str, ann: str
) -> None:
    prefer(conn, tenant, ann, "deals", {"frequency": "daily_digest", "digest": {"time": "07:15"}})
    notify(conn, tenant, ann, {"title": "Won <Acme>", "message": "a & b", "category": "deals",
                               "action_url": "https://crm.test/d/1?a=1&b=2"})  # fmt: skip
    notify(conn, tenant, ann, {"title": "Lost", "message": '"quoted"', "category": "deals"})
    notify(conn, tenant, ann, {"title": "Not digested", "category": "tasks"})
    due = next_local("America/New_York", 7, 15)
    [digest] = digests(conn)
    assert (digest["user_id"], digest["frequency"], digest["due_at"], digest["items"], digest["status"]) == (
        "ann", "daily_digest", due, 2, "open"
    )  # fmt: skip
    # only the tasks email went out; the digest's items wait
    assert [d["status"] for d in deliveries(conn)] == ["digested", "digested", "queued"]
    assert len(delivery_messages(conn)) == 1
    assert tick(conn, due - timedelta(seconds=1))["delivered"] == 0
    assert tick(conn, due)["delivered"] == 1
    [_, email] = delivery_messages(conn)
    content = email["message"]["input"]
    assert content["to"] == "ann@acme.test"
    assert content["subject"] == "Your daily digest: 2 notification(s)"
    assert content["html"] == (
        "<p>2 notification(s) since your last digest:</p><ul>"
        '<li><a href="https://crm.test/d/1?a=1&amp;b=2">Won &lt;Acme&gt;</a>: a &amp; b</li>'
        '<li><a href="">Lost</a>: &quot;quoted&quot;</li></ul>'
    )
    assert content["text"] == (
        "2 notification(s) since your last digest:\n"
        '- Won <Acme>: a & b https://crm.test/d/1?a=1&b=2\n- Lost: "quoted" \n'
    )
    [digest] = digests(conn)
    assert digest["status"] == "sent" and digest["delivery_id"] == email["message"]["delivery_id"]
    assert tick(conn, due + timedelta(hours=1))["delivered"] == 0  # once


def test_a_weekly_digest_is_due_on_the_user_s_day(conn: Conn, tenant: str, ann: str) -> None:
    prefer(
        conn, tenant, ann, "*", {"frequency": "weekly_digest", "digest": {"day": "thursday", "time": "18:00"}}
    )
    notify(conn, tenant, ann, {"title": "A"})
    [digest] = digests(conn)
    assert digest["due_at"] == next_local("America/New_York", 18, 0, weekday=4)


def test_items_after_a_digest_was_sent_go_to_the_next_one(conn: Conn, tenant: str, ann: str) -> None:
    prefer(conn, tenant, ann, "*", {"frequency": "hourly_digest"})
    notify(conn, tenant, ann, {"title": "A"})
    [first] = digests(conn)
    tick(conn, first["due_at"])
    conn.execute(
        "update conveyor.notification_digests set due_at = due_at - interval '2 hours'"
    )  # as if earlier
    notify(conn, tenant, ann, {"title": "B"})
    assert [(d["status"], d["items"]) for d in digests(conn)] == [("sent", 1), ("open", 1)]


def test_nothing_is_sent_when_there_is_nothing(conn: Conn, tenant: str, ann: str) -> None:
    prefer(conn, tenant, ann, "*", {"frequency": "daily_digest"})
    assert tick(conn, datetime.now(UTC) + timedelta(days=8))["delivered"] == 0
    assert digests(conn) == [] and deliveries(conn) == [] and delivery_messages(conn) == []


def test_a_digest_to_a_user_without_an_address_is_dropped_with_the_reason(
    conn: Conn, tenant: str, ann: str
) -> None:
    prefer(conn, tenant, "ghost", "*", {"frequency": "daily_digest"})
    notify(conn, tenant, "ghost", {"title": "A"})
    [digest] = digests(conn)
    tick(conn, digest["due_at"])
    [digest] = digests(conn)
    assert (digest["status"], digest["reason"]) == ("dropped", "no address")
    assert [(d["status"], d["reason"]) for d in deliveries(conn)] == [
        ("digested", None),
        ("dropped", "no address"),
    ]
    assert delivery_messages(conn) == []


def test_a_digest_lists_at_most_max_digest_items_and_counts_the_rest(
    conn: Conn, tenant: str, ann: str
) -> None:
    prefer(conn, tenant, ann, "*", {"frequency": "daily_digest"})
    for n in range(5):
        notify(conn, tenant, ann, {"title": f"T{n}"})
    conn.execute("set conveyor.max_digest_items = 3")
    [digest] = digests(conn)
    tick(conn, digest["due_at"])
    conn.execute("reset conveyor.max_digest_items")
    [email] = delivery_messages(conn)
    html = email["message"]["input"]["html"]
    assert html.count("<li>") == 4 and "T2" in html and "T3" not in html and "<li>and 2 more</li>" in html
    assert email["message"]["input"]["subject"] == "Your daily digest: 5 notification(s)"


def test_a_tenant_digest_template_is_used(conn: Conn, tenant: str, ann: str) -> None:
    from psycopg.types.json import Jsonb

    doc = {
        "variables": {"count": {}, "period": {}, "items_html": {}, "items_text": {}},
        "in_app": {"title": "Digest"},
        "email": {
            "subject": "{{data.count}} for you",
            "text": "{{data.items_text}}",
            "item_text": "* {{item.title}}\n",
        },
    }
    conn.execute("select conveyor.save_notification_template(%s, 'digest', %s)", (tenant, Jsonb(doc)))
    prefer(conn, tenant, ann, "*", {"frequency": "daily_digest"})
    notify(conn, tenant, ann, {"title": "One"})
    tick(conn, digests(conn)[0]["due_at"])
    [email] = delivery_messages(conn)
    assert email["message"]["input"] | {"to": None} == {"to": None, "subject": "1 for you", "text": "* One\n"}
