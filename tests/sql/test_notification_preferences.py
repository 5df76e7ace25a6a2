"""Notification preferences: setting them (checked, each problem with its path), how a
category's row, the user's '*' row and the defaults combine, and the one resolution
function conveyor.resolve_notification_channels, property-tested against the independent
reference in tests/sql/notification_rules.py over channels x frequency x quiet hours in
time zones across DST transitions x do-not-disturb x priority. Then quiet hours at work:
held deliveries and their release by the tick, drop, critical, in-app still arriving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.sql import notification_rules as rules
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


def resolve_sql(conn: Conn, prefs: dict[str, Any], priority: str, zone: str, at: datetime) -> dict[str, Any]:
    row = conn.execute(
        "select conveyor.resolve_notification_channels(%s, 'crm', %s, %s, %s) as r",
        (Jsonb(prefs), priority, zone, at),
    ).fetchone()
    assert row is not None
    return dict(row["r"])


def as_tuple(decision: dict[str, Any]) -> tuple[str, Any]:
    action = decision["action"]
    value = decision.get("until") or decision.get("due_at")
    return action, None if value is None else datetime.fromisoformat(value)


# --- setting and reading -------------------------------------------------------------------


def test_a_user_with_no_preferences_gets_the_defaults(conn: Conn, tenant: str) -> None:
    rows = conn.execute("select * from conveyor.get_notification_preferences(%s, 'u1')", (tenant,)).fetchall()
    assert rows == [{"category": None, "preferences": None, "effective": rules.DEFAULTS}]


def test_a_category_row_overrides_the_star_row_field_by_field(conn: Conn, tenant: str) -> None:
    prefer(conn, tenant, "u1", "*", {"channels": ["in_app", "email", "sms"], "digest": {"time": "07:30"}})
    effective = prefer(
        conn, tenant, "u1", "deals", {"frequency": "daily_digest", "digest": {"day": "friday"}}
    )
    assert effective == rules.DEFAULTS | {
        "channels": ["in_app", "email", "sms"],
        "frequency": "daily_digest",
        "digest": {"time": "07:30", "day": "friday"},
    }
    rows = conn.execute("select * from conveyor.get_notification_preferences(%s, 'u1')", (tenant,)).fetchall()
    assert [r["category"] for r in rows] == ["*", "deals", None]
    assert rows[2]["effective"]["frequency"] == "immediate"
    # null deletes the row: the '*' row applies again
    assert prefer(conn, tenant, "u1", "deals", None)["frequency"] == "immediate"


@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        ({"colour": "red"}, ["preferences.colour: unknown preference (expected channels, frequency, quiet_hours, "
                             "dnd_until, email_unsubscribed, digest)"]),
        ({"channels": ["email", "pigeon"]}, [
            'preferences.channels[1]: unknown channel "pigeon" (expected in_app, email or sms)']),
        ({"frequency": "sometimes"}, ['preferences.frequency: unknown frequency "sometimes" (expected immediate, '
                                      'hourly_digest, daily_digest, weekly_digest or never)']),
        ({"quiet_hours": {"start": "25:00", "end": "07:00", "timezone": "Mars/Olympus"}}, [
            'preferences.quiet_hours.start: expected a local time "HH:MM" (got "25:00")',
            'preferences.quiet_hours.timezone: unknown time zone "Mars/Olympus"']),
        ({"quiet_hours": {"start": "22:00", "end": "22:00", "action": "later"}}, [
            'preferences.quiet_hours: start and end are both "22:00" (an empty window)',
            'preferences.quiet_hours.action: expected "hold" or "drop" (got "later")']),
        ({"dnd_until": "tomorrow-ish"}, [
            'preferences.dnd_until: expected a timestamp with a time zone (got "tomorrow-ish")']),
        ({"email_unsubscribed": "yes"}, ["preferences.email_unsubscribed: expected true or false"]),
        ({"channels": ["email", "email"]}, ["preferences.channels: a channel is listed twice"]),
        ({"channels": ["email"] * 2000}, ["preferences: 18014 bytes, a preference is at most 4096"]),
        ({"digest": {"time": "8am", "day": "someday"}}, [
            'preferences.digest.time: expected a local time "HH:MM" (got "8am")',
            'preferences.digest.day: expected monday .. sunday (got "someday")']),
    ],
)  # fmt: skip
def test_preferences_are_set_only_when_valid_and_each_problem_names_its_path(
    conn: Conn, tenant: str, prefs: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        prefer(conn, tenant, "u1", "*", prefs)
    assert (caught.value.diag.message_detail or "").split("\n") == expected
    assert conn.execute("select count(*) as n from conveyor.notification_preferences").fetchone() == {"n": 0}


# --- the resolution function against the reference -----------------------------------------

# time zones with DST (north and south, a 30-minute shift), half-hour offsets, none
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "Asia/Kolkata",
    "UTC",
]
# instants near DST transitions of 2026 (UTC): Europe, North America, southern hemisphere
TRANSITIONS = [
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    datetime(2026, 4, 4, 15, 0, tzinfo=UTC),
    datetime(2026, 10, 3, 16, 0, tzinfo=UTC),
]
local_times = st.builds(
    lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59])
)


@st.composite
def preference_cases(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, datetime]:
    now = draw(st.sampled_from(TRANSITIONS)) + timedelta(
        minutes=draw(st.integers(-36 * 60, 36 * 60)), seconds=draw(st.sampled_from([0, 0, 1, 59]))
    )
    zone = draw(st.sampled_from(ZONES))
    prefs: dict[str, Any] = {}
    if draw(st.booleans()):
        prefs["channels"] = draw(st.lists(st.sampled_from(["in_app", "email", "sms"]), unique=True))
    if draw(st.booleans()):
        prefs["frequency"] = draw(
            st.sampled_from(["immediate", "hourly_digest", "daily_digest", "weekly_digest", "never"])
        )
    if draw(st.booleans()):
        start, end = draw(local_times), draw(local_times)
        if start != end:
            quiet: dict[str, Any] = {"start": start, "end": end}
            if draw(st.booleans()):
                quiet["timezone"] = draw(st.sampled_from(ZONES))
            if draw(st.booleans()):
                quiet["action"] = draw(st.sampled_from(["hold", "drop"]))
            prefs["quiet_hours"] = quiet
    if draw(st.booleans()):
        prefs["dnd_until"] = (now + timedelta(minutes=draw(st.integers(-600, 3000)))).isoformat()
    if draw(st.booleans()):
        prefs["email_unsubscribed"] = draw(st.booleans())
    if draw(st.booleans()):
        prefs["digest"] = {"time": draw(local_times), "day": draw(st.sampled_from(rules.WEEKDAYS))}
    priority = draw(st.sampled_from(["low", "normal", "high", "critical"]))
    return prefs, priority, zone, now


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=preference_cases())
def test_resolution_matches_the_reference_across_time_zones_and_dst(
    conn: Conn, case: tuple[dict[str, Any], str, str, datetime]
) -> None:
    prefs, priority, zone, now = case
    found = {channel: as_tuple(d) for channel, d in resolve_sql(conn, prefs, priority, zone, now).items()}
    assert found == rules.resolve(prefs, priority, zone, now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=preference_cases())
def test_a_held_channel_is_released_outside_quiet_hours_and_after_do_not_disturb(
    conn: Conn, case: tuple[dict[str, Any], str, str, datetime]
) -> None:
    """Whatever the inputs, a hold ends after now, at or after dnd_until, outside the quiet
    hours; and resolving again at that instant sends."""
    prefs, priority, zone, now = case
    for channel, decision in resolve_sql(conn, prefs, priority, zone, now).items():
        if decision["action"] != "hold":
            continue
        until = datetime.fromisoformat(decision["until"])
        assert until > now
        if prefs.get("dnd_until"):
            assert until >= datetime.fromisoformat(prefs["dnd_until"])
        quiet = prefs.get("quiet_hours")
        if quiet:
            assert not rules.in_quiet(quiet, rules.wall(until, quiet.get("timezone") or zone).time())
        assert resolve_sql(conn, prefs, priority, zone, until)[channel]["action"] == "send"


def test_quiet_hours_ending_inside_a_gap_end_when_the_gap_does(conn: Conn) -> None:
    """Found by the property test (against a reference that first got the gap wrong): in
    Sydney 02:00 on 2026-10-04 does not exist; quiet hours ending then end at 03:00 AEDT."""
    prefs = {"quiet_hours": {"start": "00:00", "end": "02:00"}}
    found = resolve_sql(conn, prefs, "low", "Australia/Sydney", datetime(2026, 10, 3, 15, 59, tzinfo=UTC))
    assert as_tuple(found["email"]) == ("hold", datetime(2026, 10, 3, 16, 0, tzinfo=UTC))
    assert rules.resolve(prefs, "low", "Australia/Sydney", datetime(2026, 10, 3, 15, 59, tzinfo=UTC))[
        "email"
    ] == (
        "hold",
        datetime(2026, 10, 3, 16, 0, tzinfo=UTC),
    )


def test_known_dst_cases(conn: Conn) -> None:
    """Quiet hours ending at 02:30 on Berlin's spring-forward night end at 03:00 (the gap);
    a daily digest at 02:30 on the fall-back night is due at its first occurrence."""
    quiet = {"quiet_hours": {"start": "22:00", "end": "02:30"}}
    spring = resolve_sql(conn, quiet, "normal", "Europe/Berlin", datetime(2026, 3, 28, 23, 0, tzinfo=UTC))
    assert as_tuple(spring["email"]) == ("hold", datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    digest = {"frequency": "daily_digest", "digest": {"time": "02:30"}}
    fall = resolve_sql(conn, digest, "normal", "Europe/Berlin", datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert as_tuple(fall["email"]) == ("digest", datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    assert fall["sms"]["action"] == "drop" and fall["in_app"]["action"] == "send"


# --- quiet hours at work -------------------------------------------------------------------


@pytest.fixture
def ann(conn: Conn, tenant: str) -> str:
    platform_users(conn, [(tenant, "ann", "ann@acme.test", "+15551", "Europe/Berlin")])
    channels(conn, tenant, sms=True)
    return "ann"


def quiet_now(conn: Conn, tenant: str, user: str, **extra: Any) -> None:
    """Quiet hours around now in Berlin: from an hour ago to two hours ahead (local)."""
    local = datetime.now(UTC).astimezone(rules.ZoneInfo("Europe/Berlin"))
    start, end = (
        (local - timedelta(hours=1)).strftime("%H:%M"),
        (local + timedelta(hours=2)).strftime("%H:%M"),
    )
    prefer(
        conn,
        tenant,
        user,
        "*",
        {"channels": ["in_app", "email", "sms"], "quiet_hours": {"start": start, "end": end, **extra}},
    )


def test_in_quiet_hours_email_and_sms_are_held_and_the_in_app_row_still_arrives(
    conn: Conn, tenant: str, ann: str
) -> None:
    quiet_now(conn, tenant, ann)
    notify(conn, tenant, ann, {"title": "Psst"})
    assert conn.execute("select title, archived_at from conveyor.notifications").fetchall() == [
        {"title": "Psst", "archived_at": None}
    ]
    held = deliveries(conn)
    assert [(d["channel"], d["status"]) for d in held] == [("email", "held"), ("sms", "held")]
    assert delivery_messages(conn) == []
    due = held[0]["due_at"]
    assert timedelta(hours=1, minutes=58) < due - datetime.now(UTC) <= timedelta(hours=2)
    # the due scan: next_work_due_at says when; a tick before then releases nothing
    assert conn.execute("select conveyor.next_work_due_at() as t").fetchone() == {"t": due}
    assert tick(conn, due - timedelta(seconds=1))["delivered"] == 0
    assert delivery_messages(conn) == []
    # at the end of the quiet hours the tick queues both
    assert tick(conn, due)["delivered"] == 2
    assert [(d["status"], d["attempts"]) for d in deliveries(conn)] == [("queued", 1), ("queued", 1)]
    messages = delivery_messages(conn)
    assert [m["message"]["action"] for m in messages] == ["email.send", "sms.send"]
    assert [m["message"]["delivery_id"] for m in messages] == [d["delivery_id"] for d in held]
    assert tick(conn, due + timedelta(minutes=1))["delivered"] == 0  # once


def test_quiet_hours_with_drop_drop_email_and_sms_with_the_reason(conn: Conn, tenant: str, ann: str) -> None:
    quiet_now(conn, tenant, ann, action="drop")
    notify(conn, tenant, ann, {"title": "Psst"})
    assert [(d["status"], d["reason"]) for d in deliveries(conn)] == [("dropped", "quiet hours")] * 2
    assert conn.execute("select conveyor.next_notification_due_at() as t").fetchone() == {"t": None}


def test_a_critical_notification_bypasses_quiet_hours_and_do_not_disturb(
    conn: Conn, tenant: str, ann: str
) -> None:
    quiet_now(conn, tenant, ann)
    prefer(conn, tenant, ann, "alerts", {"dnd_until": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    notify(conn, tenant, ann, {"title": "Fire", "priority": "critical", "category": "alerts"})
    assert [d["status"] for d in deliveries(conn)] == ["queued", "queued"]
    assert len(delivery_messages(conn)) == 2


def test_without_in_app_in_the_channels_the_row_is_written_archived(
    conn: Conn, tenant: str, ann: str
) -> None:
    prefer(conn, tenant, ann, "*", {"channels": ["email"]})
    notify(conn, tenant, ann, {"title": "Mail only"})
    [row] = conn.execute("select archived_at from conveyor.notifications").fetchall()
    assert row["archived_at"] is not None
    assert conn.execute(
        "select count(*) as n from conveyor.list_notifications(%s, %s)", (tenant, ann)
    ).fetchone() == {"n": 0}
    assert [(d["channel"], d["status"]) for d in deliveries(conn)] == [("email", "queued")]


def test_unsubscribed_and_never_drop_with_their_reasons(conn: Conn, tenant: str, ann: str) -> None:
    prefer(conn, tenant, ann, "*", {"email_unsubscribed": True})
    prefer(conn, tenant, ann, "spam", {"frequency": "never"})
    notify(conn, tenant, ann, {"title": "A"})
    notify(conn, tenant, ann, {"title": "B", "category": "spam"})
    assert [(d["notification_id"], d["reason"]) for d in deliveries(conn)] == [
        (1, "the user unsubscribed from email"),
        (2, "the user wants no notifications of spam"),
    ]
