"""Campaign counters and stops from delivery tracking (migration 0034): the write-back of
each campaign email records its conveyor.email_messages row with the campaign's tags,
conveyor.record_email_event records a reply, a bounce, an open; a reply ends the enrollment
that replied, a bounce the one that bounced, an open nothing; the counters follow each."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from tests.sql.test_campaigns import CAMPAIGN, Conn, apply, enroll, setup


def send_all(conn: Conn) -> None:
    """What the runner and 0034's write-back do for each queued campaign email."""
    for msg in conn.execute("select msg_id, message from pgmq.q_conveyor_actions order by msg_id").fetchall():
        m = msg["message"]
        run = conn.execute(
            "select e.trigger -> 'payload' as p, sr.step_id from conveyor.step_runs sr"
            " join conveyor.executions e using (execution_id) where sr.step_run_id = %s",
            (m["step_run_id"],),
        ).fetchone()
        assert run is not None
        message_id = f"<{m['step_run_id']}@acme.test>"
        conn.execute(
            "select * from conveyor.write_back(%s)",
            (Jsonb([{"msg_id": msg["msg_id"], "step_run_id": m["step_run_id"], "ok": True,
                     "output": {"message_id": message_id, "accepted": [run["p"]["contact"]["email"]]}}]),),
        )  # fmt: skip


def enrollment(conn: Conn, entity_id: str) -> dict[str, Any]:
    row = conn.execute(
        "select status, stop_reason, sent, replied, bounced from conveyor.campaign_enrollments where entity_id = %s",
        (entity_id,),
    ).fetchone()
    assert row is not None
    return row


def test_a_reply_and_a_bounce_stop_their_enrollments_and_are_counted(conn: Conn) -> None:
    setup(conn, contacts=3)
    doc = {**CAMPAIGN, "connection": "mail"}
    del doc["send_window"]
    apply(conn, doc)
    enroll(conn, ["1", "2", "3"])
    conn.execute(
        "insert into conveyor.connections (tenant_id, name, kind, config) values ('acme', 'mail', 'smtp', %s)",
        (
            Jsonb(
                {
                    "host": "127.0.0.1",
                    "port": 25,
                    "from": "n@acme.test",
                    "unsubscribe_url": "https://u.acme.test",
                }
            ),
        ),
    )
    send_all(conn)
    total = "select * from conveyor.campaign_stats('acme', 'welcome') where step_key = %s and variant = ''"
    assert conn.execute(total, ("",)).fetchone()["sent"] == 3  # type: ignore[index]
    assert conn.execute(total, ("hello",)).fetchone()["sent"] == 3  # type: ignore[index]
    assert enrollment(conn, "1")["sent"] == 1

    event = "select conveyor.record_email_event('acme', message_id, %s, now()) from conveyor.email_messages where to_address = %s"
    conn.execute(event, ("replied", "c1@example.com"))
    conn.execute(event, ("bounced", "c2@example.com"))
    conn.execute(event, ("opened", "c3@example.com"))
    conn.execute(event, ("opened", "c3@example.com"))
    conn.execute("select conveyor.tick()")
    assert enrollment(conn, "1") == {
        "status": "stopped",
        "stop_reason": "replied",
        "sent": 1,
        "replied": 1,
        "bounced": 0,
    }
    assert enrollment(conn, "2") == {
        "status": "stopped",
        "stop_reason": "bounced",
        "sent": 1,
        "replied": 0,
        "bounced": 1,
    }
    assert enrollment(conn, "3")["status"] == "active"  # an open stops nothing
    stats = conn.execute(total, ("",)).fetchone()
    assert stats is not None
    assert (stats["sent"], stats["replied"], stats["bounced"], stats["opened"], stats["stopped"]) == (
        3,
        1,
        1,
        1,
        2,
    )
