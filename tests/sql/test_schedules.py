"""Schedules fire each slot exactly once, catch up once, skip overlaps, disable visibly;
manual runs start a workflow with given data. Time is a parameter: nothing sleeps."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.tenant_context import acting_for, mint_token

Conn = psycopg.Connection[dict[str, Any]]


def setup_tenant(conn: Conn, tenant_id: str = "acme") -> str:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values (%s, %s) on conflict do nothing",
        (tenant_id, tenant_id),
    )
    return tenant_id


def publish(conn: Conn, slug: str, trigger: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> int:
    document = {
        "slug": slug,
        "name": slug,
        "trigger": trigger,
        "steps": steps or [{"id": "note", "set": {"slot": "{{trigger.payload.slot}}"}}],
    }
    row = conn.execute("select workflow_id from conveyor.publish('acme', %s)", (Jsonb(document),)).fetchone()
    assert row is not None
    return int(row["workflow_id"])


def schedule_of(conn: Conn, workflow_id: int) -> dict[str, Any]:
    row = conn.execute("select * from conveyor.schedules where workflow_id = %s", (workflow_id,)).fetchone()
    assert row is not None
    return row


def fire(conn: Conn, at: datetime) -> int:
    row = conn.execute("select conveyor.fire_schedules(%s) as n", (at,)).fetchone()
    assert row is not None
    return int(row["n"])


def firings(conn: Conn, workflow_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        "select f.slot, f.outcome, f.missed_slots, f.execution_id from conveyor.schedule_firings as f"
        " join conveyor.schedules as s using (schedule_id) where s.workflow_id = %s order by f.slot",
        (workflow_id,),
    ).fetchall()


def test_publish_creates_schedule_with_visible_next_run(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(conn, "weekly", {"schedule": {"cron": "0 9 * * MON", "timezone": "Europe/Berlin"}})
    schedule = schedule_of(conn, wf)
    expected = conn.execute(
        "select conveyor.cron_next('0 9 * * MON', now(), 'Europe/Berlin') as t"
    ).fetchone()
    assert expected is not None
    assert schedule["next_run_at"] == expected["t"]
    assert schedule["active"] and schedule["timezone"] == "Europe/Berlin"


def test_invalid_cron_is_refused_at_publish_with_path(conn: Conn) -> None:
    setup_tenant(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        publish(conn, "broken", {"schedule": {"cron": "0 25 * * *"}})
    assert "trigger.schedule.cron: cron hour field: 25 is out of range 0-23" in str(caught.value) + str(
        caught.value.diag.message_detail
    )


def test_each_slot_fires_exactly_once_when_ticks_race(db_url: str, conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(conn, "every-five", {"schedule": {"cron": "*/5 * * * *"}})
    due = schedule_of(conn, wf)["next_run_at"]
    barrier = threading.Barrier(4)
    counts: list[int] = []

    def tick() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            barrier.wait()
            row = c.execute("select conveyor.fire_schedules(%s)", (due + timedelta(seconds=1),)).fetchone()
            counts.append(int(row[0]) if row else -1)

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(counts) == [0, 0, 0, 1]
    # Later ticks at the same instant, and a slot forced again by hand, change nothing.
    assert fire(conn, due + timedelta(seconds=2)) == 0
    conn.execute("update conveyor.schedules set next_run_at = %s where workflow_id = %s", (due, wf))
    assert fire(conn, due + timedelta(seconds=3)) == 0
    assert [f["slot"] for f in firings(conn, wf)] == [due]
    assert conn.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 1}
    assert schedule_of(conn, wf)["next_run_at"] == due + timedelta(minutes=5)


def test_missed_slots_are_caught_up_once(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(conn, "every-five", {"schedule": {"cron": "*/5 * * * *"}})
    due = schedule_of(conn, wf)["next_run_at"]
    # No tick for an hour: thirteen slots passed; one firing stands for them all.
    assert fire(conn, due + timedelta(hours=1, seconds=30)) == 1
    [firing] = firings(conn, wf)
    assert firing["slot"] == due + timedelta(hours=1)
    assert firing["missed_slots"] == 12
    execution = conn.execute(
        "select trigger -> 'payload' ->> 'missed_slots' as m from conveyor.executions"
    ).fetchone()
    assert execution == {"m": "12"}
    assert schedule_of(conn, wf)["next_run_at"] == due + timedelta(hours=1, minutes=5)


def test_overlap_skip_records_the_skipped_slot(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(
        conn,
        "slow",
        {"schedule": {"cron": "*/5 * * * *", "overlap": "skip"}},
        steps=[{"id": "wait", "delay": {"for": "1d"}}],
    )
    due = schedule_of(conn, wf)["next_run_at"]
    assert fire(conn, due) == 1
    assert fire(conn, due + timedelta(minutes=5)) == 1
    assert [f["outcome"] for f in firings(conn, wf)] == ["started", "skipped_overlap"]
    log = conn.execute("select details ->> 'reason' as reason from conveyor.execution_logs").fetchall()
    assert {"reason": "overlap"} in log


def test_overlap_allow_starts_alongside(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(
        conn,
        "parallel",
        {"schedule": {"cron": "*/5 * * * *", "overlap": "allow"}},
        steps=[{"id": "wait", "delay": {"for": "1d"}}],
    )
    due = schedule_of(conn, wf)["next_run_at"]
    fire(conn, due)
    fire(conn, due + timedelta(minutes=5))
    assert [f["outcome"] for f in firings(conn, wf)] == ["started", "started"]


def test_schedule_disables_itself_after_consecutive_failures(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(
        conn,
        "always-fails",
        {"schedule": {"cron": "*/5 * * * *", "max_consecutive_failures": 3}},
        steps=[{"id": "boom", "stop": {"status": "failed", "reason": "broken on purpose"}}],
    )
    due = schedule_of(conn, wf)["next_run_at"]
    for i in range(4):
        fire(conn, due + timedelta(minutes=5 * i))
    schedule = schedule_of(conn, wf)
    assert [f["outcome"] for f in firings(conn, wf)] == ["started"] * 3
    assert not schedule["active"]
    assert schedule["disabled_reason"] == "disabled after 3 consecutive failed executions"
    reasons = conn.execute("select details ->> 'reason' as r from conveyor.execution_logs").fetchall()
    assert {"r": "schedule_disabled"} in reasons


def test_tick_fires_schedules(conn: Conn) -> None:
    setup_tenant(conn)
    wf = publish(conn, "hourly", {"schedule": {"cron": "0 * * * *"}})
    due = schedule_of(conn, wf)["next_run_at"]
    result = conn.execute("select conveyor.tick(%s) as r", (due,)).fetchone()
    assert result is not None and result["r"]["fired"] == 1


# --- manual runs --------------------------------------------------------------------------


def test_manual_run_starts_workflow_with_data(conn: Conn) -> None:
    setup_tenant(conn)
    publish(
        conn, "by-hand", {"manual": True}, steps=[{"id": "greet", "set": {"who": "{{trigger.payload.name}}"}}]
    )
    row = conn.execute(
        "select conveyor.trigger_workflow('acme', 'by-hand', '{\"name\": \"Ada\"}') as id"
    ).fetchone()
    assert row is not None
    execution = conn.execute(
        "select status, vars, trigger ->> 'kind' as kind from conveyor.executions where execution_id = %s",
        (row["id"],),
    ).fetchone()
    assert execution == {"status": "completed", "vars": {"who": "Ada"}, "kind": "manual"}


def test_manual_run_errors_name_the_problem(conn: Conn) -> None:
    setup_tenant(conn)
    publish(conn, "by-hand", {"manual": True})
    conn.execute("select conveyor.set_workflow_active('acme', 'by-hand', false)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='workflow "by-hand" is not active'):
        conn.execute("select conveyor.trigger_workflow('acme', 'by-hand')")
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match='workflow "nope" does not exist for tenant "acme"'
    ):
        conn.execute("select conveyor.trigger_workflow('acme', 'nope')")


def test_manual_run_for_another_tenant_is_refused(db_url: str, conn: Conn) -> None:
    setup_tenant(conn)
    setup_tenant(conn, "globex")
    publish(conn, "by-hand", {"manual": True})
    globex = mint_token(conn, "globex")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as app:
        app.execute("set role conveyor_app")
        refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not this session's tenant")
        with refused, acting_for(app, globex):
            app.execute("select conveyor.trigger_workflow('acme', 'by-hand')")
    assert conn.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 0}


def test_a_slot_past_the_plans_executions_per_month_is_recorded_as_skipped_and_says_why(conn: Conn) -> None:
    setup_tenant(conn)
    conn.execute("select conveyor.set_plan('pro', %s)", (Jsonb({"executions_per_month": 1}),))
    conn.execute("select conveyor.set_tenant_plan('acme', 'pro')")
    wf = publish(conn, "hourly", {"schedule": {"cron": "0 * * * *"}})
    due = schedule_of(conn, wf)["next_run_at"]
    assert fire(conn, due) == 1
    assert fire(conn, due + timedelta(hours=1)) == 1
    assert [(f["outcome"], f["execution_id"] is not None) for f in firings(conn, wf)] == [
        ("started", True),
        ("skipped_quota", False),
    ]
    [line] = conn.execute(
        "select workflow_id, message from conveyor.execution_logs where details ->> 'reason' = 'executions_per_month'"
    ).fetchall()
    assert line["workflow_id"] == wf
    assert 'started no execution: quota executions_per_month of plan "pro" exceeded' in line["message"]
    # the slot is spent, not retried, and the schedule goes on
    assert fire(conn, due + timedelta(hours=1, minutes=5)) == 0
