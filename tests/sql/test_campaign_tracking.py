"""Campaign counters and stops from delivery tracking, against a stand-in of the
`conveyor.email_messages` contract (migration 0034, branch h-tracking, not merged yet: the
fixture creates the table as the contract gives it, then installs the campaign triggers the
way migrate will once 0034 exists). A reply ends the enrollment that replied, a bounce the
one that bounced; the counters follow each change. Replace the stand-in by the real table
(and record_email_event) when 0034 is merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from tests.sql.test_campaigns import CAMPAIGN, Conn, apply, enroll, setup

SQL = Path(__file__).resolve().parents[2] / "sql" / "campaign_stats.sql"

CONTRACT = """
create table conveyor.email_messages (
  id bigint generated always as identity primary key, tenant_id text not null, execution_id bigint,
  step_key text, connection_slug text, to_address text not null, subject text, message_id text not null,
  provider_message_id text, tags jsonb not null default '{}', status text not null,
  opened_count int default 0, first_opened_at timestamptz, clicked_count int default 0,
  first_clicked_at timestamptz, replied_at timestamptz, unsubscribed_at timestamptz, bounce_reason text,
  sent_at timestamptz, updated_at timestamptz, unique (tenant_id, message_id))
"""


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
                     "output": {"message_id": message_id}}]),),
        )  # fmt: skip
        tags = {
            "campaign_id": str(run["p"]["campaign_id"]),
            "enrollment_id": str(run["p"]["enrollment_id"]),
            "step": run["step_id"].removesuffix("-send"),
            "variant": "",
        }
        conn.execute(
            "insert into conveyor.email_messages (tenant_id, to_address, message_id, tags, status, sent_at)"
            " values ('acme', %s, %s, %s, 'sent', now())",
            (run["p"]["contact"]["email"], message_id, Jsonb(tags)),
        )


def enrollment(conn: Conn, entity_id: str) -> dict[str, Any]:
    row = conn.execute(
        "select status, stop_reason, sent, replied, bounced from conveyor.campaign_enrollments where entity_id = %s",
        (entity_id,),
    ).fetchone()
    assert row is not None
    return row


def test_a_reply_and_a_bounce_stop_their_enrollments_and_are_counted(conn: Conn) -> None:
    setup(conn, contacts=3)
    doc = {**CAMPAIGN}
    del doc["send_window"]
    apply(conn, doc)
    enroll(conn, ["1", "2", "3"])
    conn.execute(CONTRACT)
    conn.execute(SQL.read_text())
    send_all(conn)
    total = "select * from conveyor.campaign_stats('acme', 'welcome') where step_key = %s and variant = ''"
    assert conn.execute(total, ("",)).fetchone()["sent"] == 3  # type: ignore[index]
    assert conn.execute(total, ("hello",)).fetchone()["sent"] == 3  # type: ignore[index]
    assert enrollment(conn, "1")["sent"] == 1

    conn.execute("update conveyor.email_messages set replied_at = now() where to_address = 'c1@example.com'")
    conn.execute(
        "update conveyor.email_messages set status = 'bounced', bounce_reason = '550' where to_address = 'c2@example.com'"
    )
    conn.execute("update conveyor.email_messages set opened_count = 2 where to_address = 'c3@example.com'")
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
