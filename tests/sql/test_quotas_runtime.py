"""Quotas while the engine runs: executions per month at dispatch and at manual runs (and the
month's rollover in the tenant's time zone), connections at creation, history at retention."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.dispatch_helpers import emit
from tests.sql.plan_helpers import document, plan_tenant, publish, refused, usage

Conn = psycopg.Connection[dict[str, Any]]


def set_limit(conn: Conn, plan: str, limits: dict[str, Any]) -> None:
    conn.execute("select conveyor.set_plan(%s, %s)", (plan, Jsonb(limits)))


def executions(conn: Conn, tenant_id: str) -> int:
    row = conn.execute(
        "select count(*) as n from conveyor.executions where tenant_id = %s", (tenant_id,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def dispatch(conn: Conn) -> None:
    conn.execute("select conveyor.dispatch(1000)")


def quota_logs(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select tenant_id, event_id, message, details from conveyor.execution_logs"
        " where details ->> 'reason' = 'executions_per_month' order by log_id"
    ).fetchall()


def test_the_last_execution_of_the_month_starts_and_the_next_event_starts_nothing(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free", "Pacific/Auckland")
    publish(conn, t, document("hello"))
    for _ in range(99):
        emit(conn, t, "crm.contact.created")
    dispatch(conn)
    assert executions(conn, t) == 99
    last = emit(conn, t, "crm.contact.created")
    over = emit(conn, t, "crm.contact.created")
    dispatch(conn)
    assert executions(conn, t) == 100
    assert conn.execute(
        "select count(*) as n from conveyor.executions where event_id = %s", (last,)
    ).fetchone() == {"n": 1}
    [log] = quota_logs(conn)
    assert log["event_id"] == over
    period = usage(conn, t)["period_start"]
    assert log["message"].endswith(
        f'quota executions_per_month of plan "free" exceeded: tenant "acme" has started 100 executions this month '
        f"(since {period}, Pacific/Auckland), the limit is 100"
    )
    assert log["details"] | {"error": None} == {
        "reason": "executions_per_month", "plan": "free", "used": 100, "limit": 100,
        "timezone": "Pacific/Auckland", "period_start": period, "error": None,
    }  # fmt: skip
    assert usage(conn, t)["quotas"]["executions_per_month"] == {
        "quota": "executions_per_month",
        "used": 100,
        "limit": 100,
    }


def test_a_batch_admits_up_to_the_limit_across_workflows_in_event_order(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    set_limit(conn, "free", {"executions_per_month": 5})
    publish(conn, t, document("one"))
    publish(conn, t, document("two"))
    events = [emit(conn, t, "crm.contact.created") for _ in range(4)]
    dispatch(conn)
    started = conn.execute(
        "select event_id from conveyor.executions order by event_id, workflow_id"
    ).fetchall()
    assert [r["event_id"] for r in started] == [events[0], events[0], events[1], events[1], events[2]]
    assert [log["event_id"] for log in quota_logs(conn)] == [events[2], events[3], events[3]]


def test_other_refusals_do_not_spend_the_month(conn: Conn) -> None:
    """An execution refused for another reason (run once per entity) leaves its slot to the next."""
    t = plan_tenant(conn, "acme", "free")
    set_limit(conn, "free", {"executions_per_month": 2})
    publish(conn, t, document("once") | {"settings": {"run_once_per_entity": True}})
    emit(conn, t, "crm.contact.created", entity_type="contact", entity_id="1")
    emit(conn, t, "crm.contact.created", entity_type="contact", entity_id="1")
    emit(conn, t, "crm.contact.created", entity_type="contact", entity_id="2")
    emit(conn, t, "crm.contact.created", entity_type="contact", entity_id="3")
    dispatch(conn)
    assert [r["entity_id"] for r in conn.execute("select entity_id from conveyor.executions order by 1")] == [
        "1",
        "2",
    ]
    assert len(quota_logs(conn)) == 1


def test_one_tenants_spent_month_does_not_stop_another(conn: Conn) -> None:
    a = plan_tenant(conn, "acme", "free")
    b = plan_tenant(conn, "globex", "free")
    set_limit(conn, "free", {"executions_per_month": 1})
    for t in (a, b):
        publish(conn, t, document("hello"))
    emit(conn, a, "crm.contact.created")
    emit(conn, a, "crm.contact.created")
    emit(conn, b, "crm.contact.created")
    dispatch(conn)
    assert (executions(conn, a), executions(conn, b)) == (1, 1)
    assert [log["tenant_id"] for log in quota_logs(conn)] == ["acme"]


def test_events_show_reports_the_quota_as_the_reason(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    set_limit(conn, "free", {"executions_per_month": 0})
    publish(conn, t, document("hello"))
    event = emit(conn, t, "crm.contact.created")
    dispatch(conn)
    row = conn.execute("select conveyor.explain_event('acme', %s) as e", (event,)).fetchone()
    assert row is not None
    assert [r["reason"] for r in row["e"]["reasons"]] == ["executions_per_month"]
    listed = conn.execute("select outcome from conveyor.list_events('acme', null, 10)").fetchone()
    assert listed == {"outcome": "nothing: executions_per_month"}


def test_a_manual_run_past_the_month_is_refused_and_starts_nothing(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    set_limit(conn, "free", {"executions_per_month": 1})
    publish(conn, t, document("manual", trigger={"manual": True}))
    conn.execute("select conveyor.trigger_workflow('acme', 'manual')")
    message = refused(conn, "select conveyor.trigger_workflow('acme', 'manual')")
    assert message.startswith(
        'quota executions_per_month of plan "free" exceeded: tenant "acme" has started 1 executions this month'
    )
    assert executions(conn, t) == 1


def test_the_month_rolls_over_at_midnight_in_the_tenants_time_zone(conn: Conn) -> None:
    """Auckland's February begins on 2025-01-31 at 11:00 UTC, Los Angeles's on 2025-02-01 at
    08:00 UTC: the same executions, counted at the same instants, fall in different months."""
    nz = plan_tenant(conn, "nz", "free", "Pacific/Auckland")
    la = plan_tenant(conn, "la", "free", "America/Los_Angeles")
    for t in (nz, la):
        publish(conn, t, document("manual", trigger={"manual": True}))
        conn.execute(
            "insert into conveyor.executions (tenant_id, workflow_id, version, current_step, trigger)"
            " select w.tenant_id, w.workflow_id, 1, 'note', '{}'"
            " from conveyor.workflows as w cross join generate_series(1, 100) where w.tenant_id = %s",
            (t,),
        )
    # all of them counted at 10:59:59 UTC on January 31: January for both tenants
    conn.execute(
        "select conveyor.record_usage(array(select x from conveyor.executions as x), '2025-01-31 10:59:59Z')"
    )

    def left(tenant: str, at: str) -> int:
        row = conn.execute(
            "select conveyor.lock_execution_quotas(array[%s], %s::timestamptz) -> %s ->> 'left' as n",
            (tenant, at, tenant),
        ).fetchone()
        assert row is not None
        return int(row["n"])

    assert (left(nz, "2025-01-31 10:59:59Z"), left(la, "2025-01-31 10:59:59Z")) == (0, 0)
    assert (left(nz, "2025-01-31 11:00:00Z"), left(la, "2025-01-31 11:00:00Z")) == (100, 0)
    assert (left(nz, "2025-02-01 07:59:59Z"), left(la, "2025-02-01 07:59:59Z")) == (100, 0)
    assert (left(nz, "2025-02-01 08:00:00Z"), left(la, "2025-02-01 08:00:00Z")) == (100, 100)
    nz_feb = usage(conn, nz, "2025-01-31 11:00:00Z")
    assert (nz_feb["period_start"], nz_feb["period_end"]) == ("2025-02-01", "2025-02-28T11:00:00+00:00")
    la_jan = usage(conn, la, "2025-02-01 07:59:59Z")
    assert (la_jan["period_start"], la_jan["period_end"]) == ("2025-01-01", "2025-02-01T08:00:00+00:00")
    assert la_jan["quotas"]["executions_per_month"]["used"] == 100


def test_last_months_count_does_not_refuse_this_months_events(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free", "Pacific/Auckland")
    publish(conn, t, document("hello"))
    conn.execute(
        "insert into conveyor.tenant_usage (tenant_id, period_start, shard, executions)"
        " values ('acme', (conveyor.usage_period_start('Pacific/Auckland', now()) - interval '1 month')::date, 0, 100)"
    )
    emit(conn, t, "crm.contact.created")
    dispatch(conn)
    assert executions(conn, t) == 1 and quota_logs(conn) == []


def test_the_second_connection_of_a_free_tenant_passes_and_the_third_is_refused(conn: Conn) -> None:
    t = plan_tenant(conn, "acme", "free")
    insert = "insert into conveyor.connections (tenant_id, name, kind) values (%s, %s, 'smtp')"
    conn.execute(insert, (t, "one"))
    conn.execute(insert, (t, "two"))
    message = refused(conn, insert, t, "three")
    assert message == (
        'quota connections of plan "free" exceeded: tenant "acme" has 2 connections, the limit is 2 '
        '(connection "three" would be one more)'
    )
    assert conn.execute("select count(*) as n from conveyor.connections").fetchone() == {"n": 2}
    # replacing a connection adds none
    conn.execute(insert + " on conflict (tenant_id, name) do update set kind = 'webhook'", (t, "two"))
    assert conn.execute("select kind from conveyor.connections where name = 'two'").fetchone() == {
        "kind": "webhook"
    }


@pytest.mark.parametrize(("plan", "kept"), [("free", 7), ("pro", 30), ("enterprise", 90), ("standard", 120)])
def test_history_is_kept_no_longer_than_the_plan_allows(conn: Conn, plan: str, kept: int) -> None:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name, retention_days, plan) values ('acme', 'Acme', 120, %s)",
        (plan,),
    )
    publish(conn, "acme", document("hello"))
    emit(conn, "acme", "crm.contact.created")
    dispatch(conn)
    finished = conn.execute("select finished_at from conveyor.executions").fetchone()
    assert finished is not None and finished["finished_at"] is not None

    def prune(days: float) -> int:
        row = conn.execute(
            "select (conveyor.prune_history(now() + make_interval(secs => %s * 86400)) ->> 'executions')::int as n",
            (days,),
        ).fetchone()
        assert row is not None
        return int(row["n"])

    assert prune(kept - 0.01) == 0
    assert prune(kept + 0.01) == 1
