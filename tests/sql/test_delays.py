"""Delays and waits, resumed by conveyor.resume_due with time as a parameter (no sleeping)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import (
    Conn,
    delayed,
    execution,
    install,
    make_tenant,
    now,
    start,
    step_runs,
    visited,
)


def resume(conn: Conn, at: datetime, limit: int = 1000) -> int:
    row = conn.execute("select conveyor.resume_due(%s, %s) as n", (at, limit)).fetchone()
    assert row is not None
    return int(row["n"])


def test_fixed_delay_waits_until_due_then_continues(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    eid = start(conn, tenant, delayed(conn, tenant, {"for": "2h"}))
    e = execution(conn, eid)
    assert (e["status"], e["wait_kind"], e["current_step"]) == ("waiting", "delay", "wait")
    assert e["resume_at"] == e["started_at"] + timedelta(hours=2)
    assert resume(conn, t0 + timedelta(hours=1)) == 0
    assert execution(conn, eid)["status"] == "waiting"
    assert resume(conn, t0 + timedelta(hours=2, seconds=1)) == 1
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert visited(conn, eid) == ["wait", "after"]
    assert [r["status"] for r in step_runs(conn, eid)] == ["completed", "completed"]
    # the interpreter's clock after the resume is the resume time
    assert datetime.fromisoformat(e["vars"]["done"].replace(" ", "T")) == t0 + timedelta(hours=2, seconds=1)
    assert resume(conn, t0 + timedelta(days=9)) == 0


def test_delay_until_a_rendered_timestamp(conn: Conn, tenant: str) -> None:
    at = now(conn) + timedelta(days=3)
    eid = start(
        conn,
        tenant,
        delayed(conn, tenant, {"until": "{{trigger.payload.due}}"}),
        {"payload": {"due": at.isoformat()}},
    )
    assert execution(conn, eid)["resume_at"] == at
    assert resume(conn, at) == 1
    assert execution(conn, eid)["status"] == "completed"


def test_delay_until_a_past_time_continues_immediately(conn: Conn, tenant: str) -> None:
    eid = start(conn, tenant, delayed(conn, tenant, {"until": "2001-01-01T00:00:00Z"}))
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert step_runs(conn, eid)[0]["output"]["waited"] is False


def test_window_delay_waits_for_the_next_allowed_time(conn: Conn, tenant: str) -> None:
    # Business hours on Sundays only, in Berlin time; the tenant's timezone is UTC.
    window = {"days": ["sun"], "hours": "09:00-10:00", "timezone": "Europe/Berlin"}
    eid = start(conn, tenant, delayed(conn, tenant, {"for": "1h", "window": window}))
    e = execution(conn, eid)
    resume_at = e["resume_at"]
    local = resume_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert local.weekday() == 6
    assert local.hour == 9 or resume_at == e["created_at"] + timedelta(hours=1)
    # never before the hour has passed (exactly then when the window is open at that time)
    assert resume_at >= e["created_at"] + timedelta(hours=1)
    assert resume(conn, resume_at - timedelta(seconds=1)) == 0
    assert resume(conn, resume_at) == 1
    assert execution(conn, eid)["status"] == "completed"


def test_wait_for_event_timeout_takes_the_timeout_branch(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {
            "slug": "w",
            "steps": [
                {
                    "id": "reply",
                    "wait_for_event": {
                        "event": "email.message.replied",
                        "match": {"entity_id": "{{trigger.entity_id}}"},
                        "timeout": "3d",
                    },
                    "on_event": "thanks",
                    "on_timeout": "nudge",
                },
                {"id": "thanks", "set": {"r": "thanks"}, "next": None},
                {"id": "nudge", "set": {"r": "nudge"}},
            ],
        },
    )
    eid = start(conn, tenant, wf)
    e = execution(conn, eid)
    assert (e["status"], e["wait_kind"], e["resume_at"]) == (
        "waiting",
        "event",
        e["started_at"] + timedelta(days=3),
    )
    assert step_runs(conn, eid)[0]["input"]["match"] == {"entity_id": "c1"}
    assert resume(conn, e["resume_at"] - timedelta(seconds=1)) == 0
    assert resume(conn, e["resume_at"]) == 1
    e = execution(conn, eid)
    assert e["vars"] == {"r": "nudge"}
    assert e["step_outputs"]["reply"]["output"]["timed_out"] is True


def test_resume_due_takes_the_oldest_first_up_to_the_limit(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    ids = [start(conn, tenant, delayed(conn, tenant, {"for": f"{h}h"}, slug=f"d{h}")) for h in (3, 1, 2)]
    assert resume(conn, t0 + timedelta(hours=5), limit=2) == 2
    assert [execution(conn, i)["status"] for i in ids] == ["waiting", "completed", "completed"]
    assert resume(conn, t0 + timedelta(hours=5), limit=2) == 1
    assert execution(conn, ids[0])["status"] == "completed"


def test_cancelled_delay_is_not_resumed(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    eid = start(conn, tenant, delayed(conn, tenant, {"for": "1h"}))
    conn.execute("select conveyor.cancel_execution(%s, %s)", (tenant, eid))
    assert resume(conn, t0 + timedelta(days=1)) == 0
    assert execution(conn, eid)["status"] == "cancelled"
    assert [r["status"] for r in step_runs(conn, eid)] == ["skipped"]


def test_waiting_execution_keeps_its_version_after_an_edit(conn: Conn, tenant: str) -> None:
    def publish(steps: list[dict[str, Any]]) -> tuple[int, int]:
        doc = {"slug": "edit", "name": "Edit", "trigger": {"event": "crm.contact.created"}, "steps": steps}
        row = conn.execute("select * from conveyor.publish('acme', %s)", (Jsonb(doc),)).fetchone()
        assert row is not None
        return int(row["workflow_id"]), int(row["version"])

    v1 = publish([{"id": "wait", "delay": {"for": "1d"}}, {"id": "after", "set": {"v": 1}}])
    old = start(conn, tenant, v1)
    v2 = publish(
        [
            {"id": "wait", "delay": {"for": "1d"}, "next": "extra"},
            {"id": "after", "set": {"v": 2}, "next": None},
            {"id": "extra", "set": {"extra": True}, "next": "after"},
        ]
    )
    assert v2 == (v1[0], 2)
    new = start(conn, tenant, v2)
    assert resume(conn, execution(conn, new)["resume_at"]) == 2
    assert execution(conn, old)["version"] == 1
    assert execution(conn, old)["vars"] == {"v": 1}
    assert visited(conn, old) == ["wait", "after"]
    assert execution(conn, new)["vars"] == {"extra": True, "v": 2}
    assert visited(conn, new) == ["wait", "extra", "after"]


def test_chained_delays_are_measured_from_the_resume_time(conn: Conn, tenant: str) -> None:
    t0 = now(conn)
    wf = install(
        conn,
        tenant,
        {
            "slug": "chain",
            "steps": [{"id": "a", "delay": {"for": "1h"}}, {"id": "b", "delay": {"for": "1h"}}],
        },
    )
    eid = start(conn, tenant, wf)
    assert resume(conn, t0 + timedelta(hours=1, minutes=30)) == 1
    e = execution(conn, eid)
    assert (e["current_step"], e["resume_at"]) == ("b", t0 + timedelta(hours=2, minutes=30))


def emit_event(
    conn: Conn, tenant: str, event_type: str, entity_id: str, payload: dict[str, Any] | None = None
) -> int:
    row = conn.execute(
        """insert into conveyor.events (tenant_id, event_type, entity_id, payload) values (%s, %s, %s, %s)
           returning event_id""",
        (tenant, event_type, entity_id, Jsonb(payload or {})),
    ).fetchone()
    assert row is not None
    return int(row["event_id"])


def resume_for(conn: Conn, *event_ids: int) -> int:
    row = conn.execute("select conveyor.resume_waiting_for_events(%s) as n", (list(event_ids),)).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_correlated_event_resumes_the_wait_on_its_event_branch(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "other")
    wf = install(
        conn,
        tenant,
        {
            "slug": "reply",
            "steps": [
                {
                    "id": "reply",
                    "wait_for_event": {
                        "event": "email.message.replied",
                        "match": {"entity_id": "{{trigger.entity_id}}", "payload.channel": "email"},
                        "timeout": "3d",
                    },
                    "on_event": "thanks",
                    "on_timeout": "nudge",
                },
                {"id": "thanks", "set": {"r": "{{steps.reply.output.event.payload.text}}"}, "next": None},
                {"id": "nudge", "set": {"r": "nudge"}},
            ],
        },
    )
    eid = start(conn, tenant, wf)
    unrelated = [
        emit_event(
            conn, tenant, "email.message.replied", "c2", {"channel": "email", "text": "other contact"}
        ),
        emit_event(conn, tenant, "email.message.bounced", "c1", {"channel": "email", "text": "other type"}),
        emit_event(conn, tenant, "email.message.replied", "c1", {"channel": "sms", "text": "other channel"}),
        emit_event(
            conn, "other", "email.message.replied", "c1", {"channel": "email", "text": "other tenant"}
        ),
    ]
    assert resume_for(conn, *unrelated) == 0
    assert execution(conn, eid)["status"] == "waiting"
    answer = emit_event(
        conn, tenant, "email.message.replied", "c1", {"channel": "email", "text": "yes please"}
    )
    assert resume_for(conn, answer) == 1
    e = execution(conn, eid)
    assert e["status"] == "completed"
    assert e["vars"] == {"r": "yes please"}
    assert visited(conn, eid) == ["reply", "thanks"]
    assert step_runs(conn, eid)[0]["output"]["timed_out"] is False
    # the timeout no longer applies
    assert resume(conn, e["created_at"] + timedelta(days=30)) == 0
    assert resume_for(conn, answer) == 0
