"""Pausing and resuming a whole campaign (sql/campaign_control.sql): in bounded batches, one
transaction each; an enrollment the walk has not reached yet holds at its next send instead
of sending; resuming gives held sends, and sends whose slot passed while paused, a new slot
in the send rate instead of sending them all at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.sql.test_campaigns import apply, enroll, setup

Conn = psycopg.Connection[dict[str, Any]]


def campaign(per_minute: int, *steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "slug": "welcome",
        "name": "Welcome",
        "audience": "contact",
        "send_rate": {"per_minute": per_minute},
        "steps": list(steps),
    }


HELLO = {"id": "hello", "channel": "email", "subject": "Hi", "text": "Hi"}


def control(conn: Conn, action: str, batch: int) -> dict[str, Any]:
    row = conn.execute(
        "select * from conveyor.control_campaign('acme', 'welcome', %s, %s)", (action, batch)
    ).fetchone()
    assert row is not None
    return row


def states(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select ce.entity_id, ce.status, x.current_step, x.wait_kind, x.resume_at, x.paused_at is not null as paused"
        " from conveyor.campaign_enrollments ce join conveyor.executions x using (execution_id)"
        " order by ce.enrollment_id"
    ).fetchall()


def queued_sends(conn: Conn) -> int:
    row = conn.execute(
        "select count(*) as n from conveyor.step_runs where step_id = 'hello-send' and status = 'queued'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_campaign_is_paused_and_resumed_in_batches(conn: Conn) -> None:
    setup(conn, contacts=25)
    apply(conn, campaign(1000, {"id": "pause", "channel": "wait", "delay": "1d"}, HELLO))
    enroll(conn, [str(i) for i in range(1, 26)])
    assert control(conn, "pause", 10) == {"changed": 10, "remaining": 15}
    assert control(conn, "pause", 10) == {"changed": 10, "remaining": 5}
    assert control(conn, "pause", 10) == {"changed": 5, "remaining": 0}
    assert {(s["status"], s["paused"]) for s in states(conn)} == {("paused", True)}
    # enrolling into a paused campaign is refused
    assert conn.execute("select paused from conveyor.campaigns").fetchone() == {"paused": True}
    assert control(conn, "resume", 1000) == {"changed": 25, "remaining": 0}
    assert {(s["status"], s["paused"], s["current_step"]) for s in states(conn)} == {
        ("active", False, "pause-delay")
    }


def test_an_enrollment_the_pause_has_not_reached_holds_at_its_send(conn: Conn) -> None:
    setup(conn, contacts=3)
    apply(conn, campaign(1000, {"id": "pause", "channel": "wait", "delay": "1d"}, HELLO))
    enroll(conn, ["1", "2", "3"])
    # the flag is set and one enrollment walked; the other two are still active
    assert control(conn, "pause", 1) == {"changed": 1, "remaining": 2}
    later = datetime.now(UTC) + timedelta(days=2)
    conn.execute("select conveyor.tick(p_now => %s)", (later,))
    rows = states(conn)
    assert [(r["status"], r["paused"]) for r in rows] == [("paused", True)] * 3
    held = [r for r in rows if r["current_step"] == "hello-slot"]
    assert len(held) == 2 and all(r["resume_at"] is None for r in held)
    assert queued_sends(conn) == 0
    assert conn.execute("select count(*) as n from conveyor.campaign_send_slots").fetchone() == {"n": 0}
    log = conn.execute(
        "select message from conveyor.execution_logs where message like 'held at step%%'"
    ).fetchall()
    assert [r["message"] for r in log] == ['held at step "hello-slot": the campaign is paused'] * 2

    # resuming: the held ones take their slots now and send
    assert control(conn, "resume", 1000) == {"changed": 3, "remaining": 0}
    assert queued_sends(conn) == 2
    # the one the walk paused in its delay goes on at the next tick
    conn.execute("select conveyor.tick(p_now => %s)", (later,))
    assert queued_sends(conn) == 3


def test_sends_whose_slot_passed_while_paused_take_new_slots_in_the_rate(conn: Conn) -> None:
    setup(conn, contacts=3)
    apply(conn, campaign(1, HELLO))
    enroll(conn, ["1", "2", "3"])
    # one a minute: the first sends now, the others wait for the next two minutes
    waiting = [s for s in states(conn) if s["current_step"] == "hello-slot"]
    assert len(waiting) == 2 and queued_sends(conn) == 1
    control(conn, "pause", 1000)
    # an hour passes while paused: their slots are in the past
    conn.execute(
        "update conveyor.executions set resume_at = now() - interval '1 hour' where current_step = 'hello-slot'"
    )
    control(conn, "resume", 1000)
    again = [s for s in states(conn) if s["current_step"] == "hello-slot"]
    # not sent at once: each took a new slot, one a minute, after the minutes already used
    assert len(again) == 2 and queued_sends(conn) == 1
    now = conn.execute("select now() as t").fetchone()
    assert now is not None
    minutes = sorted(s["resume_at"].replace(second=0, microsecond=0) for s in again)
    assert minutes[0] > now["t"] and minutes[1] - minutes[0] == timedelta(minutes=1)
    slot_runs = conn.execute(
        "select count(*) as n from conveyor.step_runs where step_id = 'hello-slot' and output ? 'released_at'"
    ).fetchone()
    assert slot_runs == {"n": 2}


def test_one_enrollment_resumed_after_its_slot_passed_takes_a_new_one(conn: Conn) -> None:
    setup(conn, contacts=2)
    apply(conn, campaign(1, HELLO))
    rows = enroll(conn, ["1", "2"])
    second = rows[1]["enrollment_id"]
    conn.execute("select conveyor.control_enrollment('acme', %s, 'pause')", (second,))
    conn.execute(
        "update conveyor.executions set resume_at = now() - interval '1 hour' where current_step = 'hello-slot'"
    )
    conn.execute("select conveyor.control_enrollment('acme', %s, 'resume')", (second,))
    (state,) = [s for s in states(conn) if s["current_step"] == "hello-slot"]
    now = conn.execute("select now() as t").fetchone()
    assert now is not None and state["resume_at"] > now["t"] and queued_sends(conn) == 1


def test_sends_the_tick_resumed_late_take_new_slots_instead_of_going_out_together(conn: Conn) -> None:
    setup(conn, contacts=3)
    apply(conn, campaign(1, HELLO))
    enroll(conn, ["1", "2", "3"])
    # one a minute: the first sends now, the others wait for the next two minutes
    assert queued_sends(conn) == 1
    # the tick comes ten minutes late (a backlog): both waits are due at once
    late = conn.execute("select date_trunc('minute', now()) + interval '10 minutes' as t").fetchone()
    assert late is not None
    conn.execute("select conveyor.tick(p_now => %s)", (late["t"],))
    # one a minute still: one of them goes now, the other takes the next minute's slot
    assert queued_sends(conn) == 2
    (waiting,) = [s for s in states(conn) if s["current_step"] == "hello-ontime"]
    assert waiting["resume_at"] >= late["t"] + timedelta(minutes=1)
    conn.execute("select conveyor.tick(p_now => %s)", (late["t"] + timedelta(minutes=1),))
    assert queued_sends(conn) == 3
