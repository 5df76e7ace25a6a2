"""Durations and time windows: parse_duration, next_window_start, window_errors (sql/durations.sql)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def duration(conn: Conn, text: str) -> timedelta:
    row = conn.execute("select conveyor.parse_duration(%s) as d", (text,)).fetchone()
    assert row is not None
    return row["d"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("7 days", timedelta(days=7)),
        ("1 day 2 hours", timedelta(days=1, hours=2)),
        ("1 day, 2 hours", timedelta(days=1, hours=2)),
        (" 10 Minutes ", timedelta(minutes=10)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration_accepts_compact_and_long_forms(conn: Conn, text: str, expected: timedelta) -> None:
    assert duration(conn, text) == expected


def test_parse_duration_keeps_calendar_months(conn: Conn) -> None:
    row = conn.execute(
        "select conveyor.parse_duration('1 month') = interval '1 month' as m, conveyor.parse_duration(null) as n"
    ).fetchone()
    assert row == {"m": True, "n": None}


@pytest.mark.parametrize("text", ["", "   ", "-5m", "5", "5x", "m", "1 day and 2 hours", "5 m -3 s", "1e3s"])
def test_parse_duration_rejects_invalid_text_naming_it(conn: Conn, text: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        duration(conn, text)
    assert err.value.diag.message_primary == f'invalid duration "{text}"'


UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4),
    sep=st.sampled_from(["", " ", ", "]),
)
def test_parse_duration_sums_its_parts(conn: Conn, parts: list[tuple[int, str]], sep: str) -> None:
    text = sep.join(f"{n}{unit}" for n, unit in parts)
    row = conn.execute("select conveyor.parse_duration(%s, interval '1000 years') as d", (text,)).fetchone()
    assert row is not None and row["d"] == sum((n * UNITS[u] for n, u in parts), timedelta())


@pytest.mark.parametrize(
    ("text", "maximum"),
    [
        ("366 days", "1 year"),
        ("100 years", "1 year"),
        ("999999999 years", "1 year"),
        ("999999999 weeks", "1 year"),
    ],
)
def test_parse_duration_refuses_durations_over_the_engine_maximum(
    conn: Conn, text: str, maximum: str
) -> None:
    # A run-time value past conveyor.max_duration (a templated or older version's delay)
    # fails its step with this message; before, "100 years" was a valid delay and
    # "999999999 years" raised "interval out of range".
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        duration(conn, text)
    assert err.value.diag.message_primary == f'duration "{text}" exceeds the maximum {maximum}'
    assert duration(conn, "365 days") == timedelta(days=365)


def test_the_engine_maximum_is_a_setting(conn: Conn) -> None:
    conn.execute("set conveyor.max_duration = '2 years'")
    assert duration(conn, "700 days") == timedelta(days=700)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="exceeds the maximum 2 years"):
        duration(conn, "3 years")


def test_duration_or_null_never_raises_on_huge_values(conn: Conn) -> None:
    row = conn.execute(
        "select conveyor.duration_or_null('999999999 years') as huge, conveyor.duration_or_null('5 years') = interval '5 years' as five"
    ).fetchone()
    assert row == {"huge": None, "five": True}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2001-01-01T00:00:00Z", None),
        (
            "294276-12-31",
            'timestamp "294276-12-31" is more than the maximum 1 year ahead (setting conveyor.max_duration)',
        ),
        ("infinity", 'timestamp "infinity" is out of range (from 1970-01-01 to 1 year ahead)'),
        (
            "1969-12-31T23:59:59Z",
            'timestamp "1969-12-31T23:59:59Z" is out of range (from 1970-01-01 to 1 year ahead)',
        ),
        ("not a date", 'invalid timestamp "not a date"'),
    ],
)
def test_parse_until_accepts_timestamps_from_1970_to_the_maximum_ahead(
    conn: Conn, value: str, expected: str | None
) -> None:
    if expected is None:
        row = conn.execute("select conveyor.parse_until(%s) as t", (value,)).fetchone()
        assert row is not None and row["t"] == datetime(2001, 1, 1, tzinfo=UTC)
    else:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            conn.execute("select conveyor.parse_until(%s)", (value,))
        assert err.value.diag.message_primary == expected
        conn.rollback()


# ---------------------------------------------------------------------------
# Time windows


def next_start(conn: Conn, at: str | datetime, window: Any) -> datetime:
    row = conn.execute(
        "select conveyor.next_window_start(%s::timestamptz, %s) as t", (at, Jsonb(window))
    ).fetchone()
    assert row is not None
    return row["t"]  # type: ignore[no-any-return]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


BUSINESS = {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00", "timezone": "Europe/Berlin"}


def test_business_hours_skip_the_weekend(conn: Conn) -> None:
    # Friday 19:00 in Berlin -> Monday 09:00 Berlin (08:00 UTC in winter)
    assert next_start(conn, "2026-11-20T18:00:00Z", BUSINESS) == utc("2026-11-23T08:00:00+00:00")
    # Monday 08:00 Berlin -> 09:00 the same day
    assert next_start(conn, "2026-11-23T07:00:00Z", BUSINESS) == utc("2026-11-23T08:00:00+00:00")


def test_an_instant_inside_the_window_is_returned_unchanged(conn: Conn) -> None:
    at = "2026-11-23T10:17:23.456789Z"
    assert next_start(conn, at, BUSINESS) == utc(at)
    assert next_start(conn, at, {}) == utc(at)
    assert next_start(conn, at, {"timezone": "Asia/Tokyo"}) == utc(at)


def test_end_of_window_is_exclusive(conn: Conn) -> None:
    # 17:00 Berlin on Monday is outside: next is Tuesday 09:00
    assert next_start(conn, "2026-11-23T16:00:00Z", BUSINESS) == utc("2026-11-24T08:00:00+00:00")


def test_window_crossing_midnight_belongs_to_its_start_day(conn: Conn) -> None:
    night = {"days": ["fri"], "hours": "22:00-06:00", "timezone": "UTC"}
    # Saturday 03:00 is inside Friday's night window
    assert next_start(conn, "2026-11-21T03:00:00Z", night) == utc("2026-11-21T03:00:00+00:00")
    # Saturday 07:00 -> next Friday 22:00
    assert next_start(conn, "2026-11-21T07:00:00Z", night) == utc("2026-11-27T22:00:00+00:00")
    # Friday 03:00 is not inside (Thursday's night is not allowed) -> Friday 22:00
    assert next_start(conn, "2026-11-20T03:00:00Z", night) == utc("2026-11-20T22:00:00+00:00")


def test_berlin_spring_forward_start_in_the_gap_begins_after_the_gap(conn: Conn) -> None:
    # 29 March 2026: 02:00 -> 03:00 in Berlin; 02:30 does not exist -> 03:00 CEST (01:00 UTC)
    window = {"hours": "02:30-04:00", "timezone": "Europe/Berlin"}
    assert next_start(conn, "2026-03-28T23:00:00Z", window) == utc("2026-03-29T01:00:00+00:00")
    # a window entirely inside the gap does not exist that day: the next day's start
    gap_only = {"hours": "02:15-02:45", "timezone": "Europe/Berlin"}
    assert next_start(conn, "2026-03-28T23:00:00Z", gap_only) == utc("2026-03-30T00:15:00+00:00")


def test_berlin_fall_back_repeated_start_is_matched_the_second_time(conn: Conn) -> None:
    # 25 October 2026: 03:00 CEST -> 02:00 CET. At 02:45 CEST the 02:00 window comes again at 02:00 CET.
    window = {"hours": "02:00-02:30", "timezone": "Europe/Berlin"}
    assert next_start(conn, "2026-10-25T00:45:00Z", window) == utc("2026-10-25T01:00:00+00:00")
    # before the first 02:00, the first occurrence (CEST) wins
    assert next_start(conn, "2026-10-24T23:00:00Z", window) == utc("2026-10-25T00:00:00+00:00")


def test_sydney_spring_forward_in_october(conn: Conn) -> None:
    # 4 October 2026: 02:00 AEST -> 03:00 AEDT in Sydney (southern hemisphere)
    window = {"hours": "02:15-05:00", "timezone": "Australia/Sydney"}
    assert next_start(conn, "2026-10-03T14:00:00Z", window) == utc("2026-10-03T16:00:00+00:00")


def test_sydney_fall_back_in_april(conn: Conn) -> None:
    # 5 April 2026: 03:00 AEDT -> 02:00 AEST. At 02:50 AEDT the 02:30 window comes again at 02:30 AEST.
    window = {"hours": "02:30-02:45", "timezone": "Australia/Sydney"}
    assert next_start(conn, "2026-04-04T15:50:00Z", window) == utc("2026-04-04T16:30:00+00:00")
    # business hours the Monday after: 09:00 AEST is 23:00 UTC the day before
    sydney = {**BUSINESS, "timezone": "Australia/Sydney"}
    assert next_start(conn, "2026-04-04T15:50:00Z", sydney) == utc("2026-04-05T23:00:00+00:00")


def test_invalid_windows_raise_naming_the_problem(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown time zone "Mars/Olympus"'):
        next_start(conn, "2026-01-01T00:00:00Z", {"timezone": "Mars/Olympus"})
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"window\.hours"):
        next_start(conn, "2026-01-01T00:00:00Z", {"hours": "9-17"})


def test_window_errors_lists_each_problem(conn: Conn) -> None:
    window = {"days": ["mon", "funday", 3], "hours": "25:00-26:00", "timezone": "Nowhere/City", "tz": "UTC"}
    rows = conn.execute(
        "select e from conveyor.window_errors(%s, 'steps[1].delay.window') as e order by 1", (Jsonb(window),)
    ).fetchall()
    assert [r["e"] for r in rows] == sorted(
        [
            'steps[1].delay.window.days[1]: unknown day "funday" (expected mon, tue, wed, thu, fri, sat, sun)',
            "steps[1].delay.window.days[2]: unknown day 3 (expected mon, tue, wed, thu, fri, sat, sun)",
            'steps[1].delay.window.hours: expected "HH:MM-HH:MM" (e.g. "09:00-17:00"), got "25:00-26:00"',
            'steps[1].delay.window.timezone: unknown time zone "Nowhere/City"',
            "steps[1].delay.window.tz: unknown key (expected days, hours, timezone)",
        ]
    )
    assert conn.execute(
        "select count(*) as n from conveyor.window_errors(%s, 'w')", (Jsonb(BUSINESS),)
    ).fetchone() == {"n": 0}


# Property test: next_window_start against a brute-force minute scan with zoneinfo.

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def in_window(
    at: datetime, days: list[str] | None, start: timedelta, length: timedelta, tz: ZoneInfo
) -> bool:
    local = at.astimezone(tz).replace(tzinfo=None)
    for day in (local.date(), local.date() - timedelta(days=1)):
        if days is None or DAY_NAMES[day.weekday()] in days:
            begins = datetime.combine(day, time()) + start
            if begins <= local < begins + length:
                return True
    return False


def ref_next_start(
    at: datetime, days: list[str] | None, start: timedelta, end: timedelta, tz: ZoneInfo
) -> datetime:
    length = end - start if end > start else end - start + timedelta(days=1)
    if in_window(at, days, start, length, tz):
        return at
    t = at.replace(second=0, microsecond=0)
    if t < at:
        t += timedelta(minutes=1)
    while not in_window(t, days, start, length, tz):
        t += timedelta(minutes=1)
    return t


ZONES = ["Europe/Berlin", "Australia/Sydney", "America/New_York", "Australia/Lord_Howe", "UTC"]
TRANSITION_DAYS = [
    date(2026, 3, 8),
    date(2026, 3, 29),
    date(2026, 4, 5),
    date(2026, 10, 4),
    date(2026, 10, 25),
    date(2026, 11, 1),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    zone=st.sampled_from(ZONES),
    near=st.sampled_from(TRANSITION_DAYS),
    offset_minutes=st.integers(-3 * 24 * 60, 2 * 24 * 60),
    days=st.one_of(st.none(), st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True)),
    start_q=st.integers(0, 95),
    end_q=st.integers(0, 96),
)
def test_next_window_start_matches_a_minute_scan(
    conn: Conn, zone: str, near: date, offset_minutes: int, days: list[str] | None, start_q: int, end_q: int
) -> None:
    at = datetime.combine(near, time(), tzinfo=UTC) + timedelta(minutes=offset_minutes, seconds=7)
    start, end = timedelta(minutes=15 * start_q), timedelta(minutes=15 * end_q)
    hours = f"{start_q // 4:02d}:{start_q % 4 * 15:02d}-{end_q // 4:02d}:{end_q % 4 * 15:02d}"
    window: dict[str, Any] = {"hours": hours, "timezone": zone}
    if days is not None:
        window["days"] = days
    assert next_start(conn, at, window) == ref_next_start(at, days, start, end, ZoneInfo(zone))


def test_a_window_re_entered_when_the_clock_falls_back_opens_at_the_transition(conn: Conn) -> None:
    """02:15:07 CEST is past the window 00:00-02:15; at 03:00 CEST the clock turns back to
    02:00 CET, inside the window again (found by the minute scan above)."""
    at = datetime(2026, 10, 25, 0, 15, 7, tzinfo=UTC)
    window = {"hours": "00:00-02:15", "timezone": "Europe/Berlin"}
    assert next_start(conn, at, window) == datetime(2026, 10, 25, 1, 0, tzinfo=UTC)
    assert ref_next_start(
        at, None, timedelta(0), timedelta(hours=2, minutes=15), ZoneInfo("Europe/Berlin")
    ) == (datetime(2026, 10, 25, 1, 0, tzinfo=UTC))


def test_a_bad_duration_setting_is_named(conn: Conn) -> None:
    conn.execute("set conveyor.max_duration = 'forever'")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        duration(conn, "1d")
    assert (
        err.value.diag.message_primary
        == "setting conveyor.max_duration = 'forever' is not a positive duration"
    )
