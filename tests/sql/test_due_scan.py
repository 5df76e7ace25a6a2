"""The due-scan: conveyor.tick() says when time-driven work is next due (the runner sleeps
until then), and finding nothing due is one index probe whatever number of executions wait."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import Conn, delayed, execution, install, now, start


def tick(conn: Conn, at: datetime, batch: int = 1000) -> dict[str, Any]:
    row = conn.execute("select conveyor.tick(%s, %s) as r", (at, batch)).fetchone()
    assert row is not None
    result = row["r"]
    assert isinstance(result, dict)
    return result


def due_at(result: dict[str, Any]) -> datetime | None:
    value = result["next_due_at"]
    return None if value is None else datetime.fromisoformat(value)


def test_tick_reports_nothing_due_when_nothing_waits(conn: Conn, tenant: str) -> None:
    result = tick(conn, now(conn))
    assert (result["next_due_at"], result["next_due_in_s"]) == (None, None)


def test_tick_reports_when_the_next_delay_is_due(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    later = start(conn, tenant, delayed(conn, tenant, {"for": "2h"}, slug="later"))
    sooner = start(conn, tenant, delayed(conn, tenant, {"for": "90s"}, slug="sooner"))
    result = tick(conn, t0)
    assert result["resumed"] == 0
    assert due_at(result) == execution(conn, sooner)["resume_at"]
    assert 85 < result["next_due_in_s"] < 95

    # once it has resumed, the next one is reported
    result = tick(conn, t0 + timedelta(minutes=5))
    assert result["resumed"] == 1
    assert due_at(result) == execution(conn, later)["resume_at"]
    assert 6_000 < result["next_due_in_s"] < 7_200


def test_tick_reports_an_event_waits_timeout(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "w",
            "steps": [
                {"id": "reply", "wait_for_event": {"event": "email.message.replied", "timeout": "3d"}},
                {"id": "after", "set": {"r": 1}},
            ],
        },
    )
    eid = start(conn, tenant, wf)
    assert due_at(tick(conn, now(conn))) == execution(conn, eid)["resume_at"]


def test_a_paused_execution_is_neither_due_nor_reported(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    eid = start(conn, tenant, delayed(conn, tenant, {"for": "1m"}))
    conn.execute("select conveyor.pause_execution(%s, %s)", (tenant, eid))
    result = tick(conn, t0 + timedelta(hours=1))
    assert (result["resumed"], result["next_due_at"]) == (0, None)
    assert execution(conn, eid)["status"] == "waiting"

    conn.execute("select conveyor.resume_execution(%s, %s)", (tenant, eid))
    assert due_at(tick(conn, t0)) == execution(conn, eid)["resume_at"]
    assert tick(conn, t0 + timedelta(hours=1))["resumed"] == 1
    assert execution(conn, eid)["status"] == "completed"


def test_work_left_for_the_next_tick_is_reported_overdue(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    for h in (1, 2, 3):
        start(conn, tenant, delayed(conn, tenant, {"for": f"{h}h"}, slug=f"d{h}"))
    result = tick(conn, t0 + timedelta(hours=5), batch=2)
    assert result["resumed"] == 2
    assert result["next_due_in_s"] < 0  # due before this tick began: tick again at once
    result = tick(conn, t0 + timedelta(hours=5), batch=2)
    assert (result["resumed"], result["next_due_at"], result["next_due_in_s"]) == (1, None, None)


def test_work_that_falls_due_while_the_tick_runs_is_due_at_once(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, delayed(conn, tenant, {"for": "1h"}))
    resume_at = execution(conn, eid)["resume_at"]
    # a tick whose clock is a hair before the delay ends, and which takes longer than that
    row = conn.execute(
        "select conveyor.tick(%s) as r from (select pg_sleep(0.01)) as s",
        (resume_at - timedelta(microseconds=10),),
    ).fetchone()
    assert row is not None and row["r"]["resumed"] == 0
    assert row["r"]["next_due_in_s"] == 0
    assert tick(conn, resume_at)["resumed"] == 1


def test_tick_reports_the_next_schedule_slot(conn: Conn, tenant: str) -> None:
    document = {
        "slug": "hourly",
        "name": "hourly",
        "trigger": {"schedule": {"cron": "0 * * * *"}},
        "steps": [{"id": "note", "set": {"x": 1}}],
    }
    conn.execute("select conveyor.publish(%s, %s)", (tenant, Jsonb(document)))
    row = conn.execute("select next_run_at from conveyor.schedules").fetchone()
    assert row is not None
    assert due_at(tick(conn, now(conn))) == row["next_run_at"]


def test_nothing_due_is_found_through_the_due_scan_index(conn: Conn, tenant: str) -> None:
    wf = delayed(conn, tenant, {"for": "30d"})
    for _ in range(3):
        start(conn, tenant, wf)
    conn.execute("analyze conveyor.executions")
    conn.execute("set enable_seqscan = off")  # a table this small is otherwise read whole
    plan = conn.execute(
        "explain select e.execution_id from conveyor.executions as e"
        " where e.status = 'waiting' and e.wait_kind in ('delay', 'event', 'approval') and e.paused_at is null"
        " and e.resume_at is not null order by e.resume_at, e.execution_id limit 1"
    ).fetchall()
    text = "\n".join(r["QUERY PLAN"] for r in plan)
    assert "executions_due_scan_idx" in text and "Sort" not in text, text
