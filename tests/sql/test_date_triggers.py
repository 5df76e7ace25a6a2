"""Date-based triggers: scheduled from the watched table, moved when the date changes,
dropped when the row goes, fired once per entity and date value."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def platform(conn: Conn) -> Conn:
    """A watched, registered contacts table for two tenants, Acme in Berlin."""
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name, timezone) values"
        " ('acme', 'Acme', 'Europe/Berlin'), ('globex', 'Globex', 'UTC')"
    )
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text not null,"
        " joined_at date, renewal_at timestamptz, tz text)"
    )
    conn.execute("select conveyor.watch('public.contacts', 'crm', 'contact')")
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    return conn


def publish(conn: Conn, trigger: dict[str, Any]) -> int:
    document = {
        "slug": "anniversary",
        "name": "Anniversary",
        "trigger": {"date": trigger},
        "steps": [{"id": "note", "set": {"contact": "{{trigger.entity_id}}"}}],
    }
    row = conn.execute("select workflow_id from conveyor.publish('acme', %s)", (Jsonb(document),)).fetchone()
    assert row is not None
    return int(row["workflow_id"])


def pending(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select entity_id, due_at from conveyor.date_trigger_firings where fired_at is null order by entity_id"
    ).fetchall()


def berlin(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin"))


def test_existing_rows_are_scheduled_at_publish_in_the_tenant_zone(platform: Conn) -> None:
    joined = date.today() + timedelta(days=3)
    platform.execute(
        "insert into public.contacts (id, tenant_id, joined_at) values (1, 'acme', %s)", (joined,)
    )
    platform.execute(
        "insert into public.contacts (id, tenant_id, joined_at) values (2, 'globex', %s)", (joined,)
    )
    platform.execute("select conveyor.dispatch()")
    publish(platform, {"entity": "contact", "column": "joined_at", "offset": "30 days", "at": "09:00"})
    assert pending(platform) == [{"entity_id": "1", "due_at": berlin(joined + timedelta(days=30), 9)}]


def test_new_row_schedules_and_fires_once(platform: Conn) -> None:
    publish(platform, {"entity": "contact", "column": "joined_at", "offset": "2 days", "at": "08:30"})
    joined = date.today() + timedelta(days=1)
    platform.execute(
        "insert into public.contacts (id, tenant_id, joined_at) values (7, 'acme', %s)", (joined,)
    )
    platform.execute("select conveyor.dispatch()")
    due = berlin(joined + timedelta(days=2), 8, 30)
    assert pending(platform) == [{"entity_id": "7", "due_at": due}]
    assert platform.execute(
        "select conveyor.fire_date_triggers(%s) as n", (due - timedelta(minutes=1),)
    ).fetchone() == {"n": 0}
    assert platform.execute("select conveyor.fire_date_triggers(%s) as n", (due,)).fetchone() == {"n": 1}
    assert platform.execute(
        "select conveyor.fire_date_triggers(%s) as n", (due + timedelta(days=1),)
    ).fetchone() == {"n": 0}
    execution = platform.execute("select status, entity_id, vars from conveyor.executions").fetchall()
    assert execution == [{"status": "completed", "entity_id": "7", "vars": {"contact": "7"}}]


def test_changed_date_moves_the_pending_firing_and_deleted_row_drops_it(platform: Conn) -> None:
    publish(platform, {"entity": "contact", "column": "joined_at", "offset": "1 day", "at": "10:00"})
    first = date.today() + timedelta(days=5)
    platform.execute(
        "insert into public.contacts (id, tenant_id, joined_at) values (3, 'acme', %s)", (first,)
    )
    platform.execute("select conveyor.dispatch()")
    moved = first + timedelta(days=10)
    platform.execute("update public.contacts set joined_at = %s where id = 3", (moved,))
    platform.execute("update public.contacts set tz = 'ignored' where id = 3")  # not the date: stays
    platform.execute("select conveyor.dispatch()")
    assert pending(platform) == [{"entity_id": "3", "due_at": berlin(moved + timedelta(days=1), 10)}]
    platform.execute("delete from public.contacts where id = 3")
    platform.execute("select conveyor.dispatch()")
    assert pending(platform) == []


def test_days_before_a_timestamp_in_the_rows_own_zone(platform: Conn) -> None:
    publish(
        platform,
        {
            "entity": "contact",
            "column": "renewal_at",
            "offset": "-7 days",
            "at": "09:00",
            "timezone_column": "tz",
        },
    )
    renewal = datetime.now(ZoneInfo("America/New_York")).replace(microsecond=0) + timedelta(days=20)
    platform.execute(
        "insert into public.contacts (id, tenant_id, renewal_at, tz) values (9, 'acme', %s, 'America/New_York')",
        (renewal,),
    )
    platform.execute("select conveyor.dispatch()")
    local_day = renewal.astimezone(ZoneInfo("America/New_York")).date() - timedelta(days=7)
    expected = datetime(
        local_day.year, local_day.month, local_day.day, 9, tzinfo=ZoneInfo("America/New_York")
    )
    assert pending(platform) == [{"entity_id": "9", "due_at": expected}]


def test_dates_already_past_are_not_fired_late(platform: Conn) -> None:
    publish(platform, {"entity": "contact", "column": "joined_at", "offset": "1 day"})
    platform.execute(
        "insert into public.contacts (id, tenant_id, joined_at) values (4, 'acme', %s)",
        (date.today() - timedelta(days=30),),
    )
    platform.execute("select conveyor.dispatch()")
    assert pending(platform) == []


def test_unwatched_entity_is_refused_with_a_hint(platform: Conn) -> None:
    platform.execute("select conveyor.unwatch('public.contacts')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='entity "contact" is not watched'):
        publish(platform, {"entity": "contact", "column": "joined_at", "offset": "1 day"})


def test_a_firing_past_the_plans_executions_per_month_starts_nothing_and_says_why(platform: Conn) -> None:
    platform.execute("select conveyor.set_plan('pro', %s)", (Jsonb({"executions_per_month": 1}),))
    platform.execute("select conveyor.set_tenant_plan('acme', 'pro')")
    publish(platform, {"entity": "contact", "column": "joined_at", "offset": "1 day", "at": "09:00"})
    joined = date.today() + timedelta(days=1)
    for contact in (1, 2):
        platform.execute(
            "insert into public.contacts (id, tenant_id, joined_at) values (%s, 'acme', %s)",
            (contact, joined),
        )
    platform.execute("select conveyor.dispatch()")
    due = berlin(joined + timedelta(days=1), 9)
    assert platform.execute("select conveyor.fire_date_triggers(%s) as n", (due,)).fetchone() == {"n": 2}
    fired = platform.execute(
        "select entity_id, execution_id is not null as started from conveyor.date_trigger_firings"
        " where fired_at is not null order by started"
    ).fetchall()
    assert [f["started"] for f in fired] == [False, True]
    [line] = platform.execute(
        "select message from conveyor.execution_logs where details ->> 'reason' = 'executions_per_month'"
    ).fetchall()
    assert line["message"].startswith(
        f"date trigger for contact {fired[0]['entity_id']} started no execution: quota executions_per_month"
    )
