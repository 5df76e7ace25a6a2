"""Send slots at scale (sql/campaign_send_slots.sql, migration 0036): the cursor makes a
reservation cost O(1) amortised yet gives exactly the slots the minute-by-minute walk gave,
also when contacts in different zones share the tenant's minutes; a slot that will not be
used (the enrollment paused, cancelled, or its recipient suppressed) goes back to its
minute, once, and a resumed enrollment takes a new one."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.sql.test_campaign_tracking import send_all
from tests.sql.test_campaigns import CAMPAIGN, Conn, apply, enroll, setup

MONDAY = datetime(2027, 1, 4, 7, 50, tzinfo=UTC)  # 16:50 in Tokyo: its window closes at 08:00 UTC

# The walk before the cursor (migration 0035's conveyor.campaign_send_slot), as the reference.
REFERENCE = """
create function pg_temp.reference_slot(p_tenant_id text, p_key text, p_per_minute integer, p_window jsonb,
  p_now timestamptz) returns timestamptz language plpgsql as $$
declare
  v_at timestamptz := p_now;
  v_minute timestamptz;
  v_used integer;
begin
  if p_window is not null then
    v_at := conveyor.next_window_start(p_now, p_window);
  end if;
  v_minute := date_trunc('minute', v_at);
  for i in 1..1440 loop
    insert into conveyor.campaign_send_slots as s (tenant_id, key, minute, used)
    values (p_tenant_id, p_key, v_minute, 1)
    on conflict (tenant_id, key, minute) do update set used = s.used + 1 where s.used < p_per_minute
    returning s.used into v_used;
    if v_used is not null then
      return greatest(v_at, v_minute + (v_used - 1) * interval '60 seconds' / p_per_minute);
    end if;
    v_minute := v_minute + interval '1 minute';
    if p_window is not null and conveyor.next_window_start(v_minute, p_window) > v_minute then
      v_minute := date_trunc('minute', conveyor.next_window_start(v_minute, p_window));
    end if;
    v_at := v_minute;
  end loop;
  raise exception 'no slot';
end;
$$"""


def window(zone: str, hours: str = "09:00-17:00") -> dict[str, Any]:
    return {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": hours, "timezone": zone}


def tenants(conn: Conn) -> None:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme'), ('ref', 'Reference')"
    )
    conn.execute(REFERENCE)


def test_the_cursor_gives_the_walk_s_slots_across_zones_and_windows(conn: Conn) -> None:
    # Tokyo's window (00:00-08:00 UTC) is open at MONDAY while UTC's opens at 09:00: a cursor
    # per key would have the Tokyo contacts skip their own minutes after the UTC ones filled
    # 09:00-09:14; London in winter shares UTC's minutes under another window
    tenants(conn)
    windows = [
        window("UTC"),
        window("Asia/Tokyo"),
        window("Europe/London"),
        window("UTC", "09:00-09:07"),
        None,
    ]
    rng = random.Random(7)
    now = MONDAY
    slot = "select conveyor.campaign_send_slot('acme', 'email', %s, %s, %s) as t"
    ref = "select pg_temp.reference_slot('ref', 'email', %s, %s, %s) as t"
    for i in range(600):
        w = rng.choice(windows[:3]) if i < 150 else rng.choice(windows)
        rate = 10 if i % 7 else 12
        now += timedelta(seconds=rng.choice([0, 0, 0, 5, 40]))
        args = (rate, Jsonb(w) if w else None, now)
        got = conn.execute(slot, args).fetchone()
        want = conn.execute(ref, args).fetchone()
        assert got == want, (i, w, rate, now)
    counts = conn.execute(
        "select tenant_id, minute, used from conveyor.campaign_send_slots order by 1, 2"
    ).fetchall()
    assert [(r["minute"], r["used"]) for r in counts if r["tenant_id"] == "acme"] == [
        (r["minute"], r["used"]) for r in counts if r["tenant_id"] == "ref"
    ]
    assert conn.execute(
        "select count(*) as n from conveyor.campaign_send_cursors where tenant_id = 'acme'"
    ).fetchone() == {"n": 10}  # one per window and rate


def test_a_reservation_costs_o_1_amortised(conn: Conn) -> None:
    tenants(conn)
    conn.execute("set track_functions = 'pl'")

    def window_calls(sql: str) -> int:
        with conn.transaction():
            conn.execute(sql, (Jsonb(window("UTC")), MONDAY))
            row = conn.execute(
                "select calls from pg_stat_xact_user_functions where funcname = 'next_window_start'"
            ).fetchone()
            assert row is not None
            return int(row["calls"])

    # 500 sends at 10 a minute: the walk tries ~25 full minutes per send, the cursor ~2
    walked = window_calls(
        "select count(pg_temp.reference_slot('ref', 'email', 10, %s, %s)) from generate_series(1, 500)"
    )
    cursored = window_calls(
        "select count(conveyor.campaign_send_slot('acme', 'email', 10, %s, %s)) from generate_series(1, 500)"
    )
    assert walked > 10_000 and cursored < 1_100, (walked, cursored)
    assert conn.execute(
        "select max(used) as m, count(*) as n from conveyor.campaign_send_slots where tenant_id = 'acme'"
    ).fetchone() == {"m": 10, "n": 50}


def test_two_transactions_reserving_in_two_windows_in_opposite_orders_do_not_deadlock(
    db_url: str, conn: Conn
) -> None:
    # each would hold a minute's row the other waits for (two runners' tick batches, each
    # with contacts in two zones): one transaction at a time reserves a tenant's slots
    tenants(conn)
    utc, tokyo = Jsonb(window("UTC")), Jsonb(window("Asia/Tokyo"))
    slot = "select conveyor.campaign_send_slot('acme', 'email', 10, %s, %s)"
    first_done = threading.Event()
    errors: list[BaseException] = []

    def a() -> None:
        try:
            with psycopg.connect(db_url) as c:
                c.execute(slot, (utc, MONDAY))
                first_done.set()
                time.sleep(0.5)  # b is waiting for the tenant's slots by now
                c.execute(slot, (tokyo, MONDAY))
        except BaseException as exc:
            errors.append(exc)
            first_done.set()

    def b() -> None:
        try:
            first_done.wait(10)
            with psycopg.connect(db_url) as c:
                c.execute(slot, (tokyo, MONDAY))
                c.execute(slot, (utc, MONDAY))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert conn.execute("select sum(used) as n from conveyor.campaign_send_slots").fetchone() == {"n": 4}


def slots(conn: Conn) -> dict[datetime, int]:
    rows = conn.execute(
        "select minute, used from conveyor.campaign_send_slots where used > 0 order by 1"
    ).fetchall()
    return {r["minute"]: r["used"] for r in rows}


def slot_run(conn: Conn, entity_id: str, step: str = "hello-slot") -> dict[str, Any]:
    row = conn.execute(
        "select ce.enrollment_id, sr.output, e.resume_at from conveyor.campaign_enrollments ce"
        " join conveyor.executions e using (execution_id) join conveyor.step_runs sr using (execution_id)"
        " where ce.entity_id = %s and sr.step_id = %s",
        (entity_id, step),
    ).fetchone()
    assert row is not None
    return row


def control(conn: Conn, enrollment_id: int, action: str) -> None:
    conn.execute("select conveyor.control_enrollment('acme', %s, %s)", (enrollment_id, action))


def test_a_paused_or_cancelled_enrollment_returns_its_slot_once_and_a_resumed_one_takes_a_new_one(
    conn: Conn,
) -> None:
    setup(conn, contacts=5)
    doc = {**CAMPAIGN, "send_rate": {"per_minute": 2}}
    del doc["send_window"]
    doc["steps"] = [{"id": "pause", "channel": "wait", "delay": "1d"}, *CAMPAIGN["steps"][:1]]
    apply(conn, doc)
    enroll(conn, ["1", "2", "3", "4", "5"])
    due = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    conn.execute("select conveyor.tick(p_now => %s)", (due,))
    m0, m1, m2 = due, due + timedelta(minutes=1), due + timedelta(minutes=2)
    assert slots(conn) == {m0: 2, m1: 2, m2: 1}
    # 1 and 2 send at once; 3 and 4 wait for m1, 5 for m2
    three, four, five = (slot_run(conn, e) for e in ("3", "4", "5"))
    control(conn, four["enrollment_id"], "cancel")
    control(conn, three["enrollment_id"], "pause")
    control(conn, five["enrollment_id"], "pause")
    control(conn, five["enrollment_id"], "cancel")  # already returned while paused: not twice
    assert slots(conn) == {m0: 2}
    assert "returned" in slot_run(conn, "3")["output"]
    # later reservations take the returned minutes (not m2 and m3)
    taken = conn.execute(
        "select conveyor.campaign_send_slot('acme', 'email', 2, null, %s) as t from generate_series(1, 2)",
        (due,),
    ).fetchall()
    assert [r["t"].replace(second=0, microsecond=0) for r in taken] == [m1, m1]
    # resumed: its slot step runs again (conveyor.campaign_release_slots) and takes a new
    # slot in the rate, from now, instead of sending at the returned time
    control(conn, three["enrollment_id"], "resume")
    runs = conn.execute(
        "select sr.output from conveyor.step_runs sr join conveyor.campaign_enrollments ce using (execution_id)"
        " where ce.entity_id = '3' and sr.step_id = 'hello-slot' order by sr.visit"
    ).fetchall()
    assert len(runs) == 2 and "released_at" in runs[0]["output"]
    renewed = datetime.fromisoformat(runs[1]["output"]["send_at"]).replace(second=0, microsecond=0)
    assert renewed < m0 and slots(conn)[renewed] >= 1  # now's minutes, not the returned m1
    assert {k: v for k, v in slots(conn).items() if k >= m0} == {m0: 2, m1: 2}
    conn.execute("select conveyor.tick(p_now => %s)", (m2 + timedelta(seconds=59),))
    assert conn.execute(
        "select count(distinct execution_id) as n from conveyor.step_runs where step_id = 'hello-send'"
    ).fetchone() == {"n": 3}  # 1, 2 and 3 send; 4 and 5 were cancelled


def test_a_recipient_suppressed_while_waiting_for_its_slot_returns_it(conn: Conn) -> None:
    setup(conn, contacts=3)
    doc = {**CAMPAIGN, "connection": "mail", "send_rate": {"per_minute": 2}}
    del doc["send_window"]
    apply(conn, doc)
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
    enroll(conn, ["1", "2", "3"])
    # ticks every 30 s: each slot's wait resumed within its minute (a later one takes a new slot)
    started = datetime.now(UTC)
    for seconds in (30, 60, 90, 120):
        conn.execute("select conveyor.tick(p_now => %s)", (started + timedelta(seconds=seconds),))
    send_all(conn)
    # the hello waits time out into the nudges, which wait for their slots after `due`'s minute
    due = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
    conn.execute(
        "select conveyor.campaign_send_slot('acme', 'email', 2, null, %s) from generate_series(1, 2)", (due,)
    )
    conn.execute("select conveyor.tick(p_now => %s)", (due,))
    m1, m2 = due + timedelta(minutes=1), due + timedelta(minutes=2)
    assert {k: v for k, v in slots(conn).items() if k >= due} == {due: 2, m1: 2, m2: 1}
    minute = datetime.fromisoformat(slot_run(conn, "1", "nudge-slot")["output"]["send_at"])
    conn.execute(
        "select conveyor.record_email_event('acme', message_id, 'unsubscribed', now())"
        " from conveyor.email_messages where to_address = 'c1@example.com'"
    )
    assert "returned" in slot_run(conn, "1", "nudge-slot")["output"]
    assert "returned" not in slot_run(conn, "2", "nudge-slot")["output"]
    after = {due: 2, m1: 2, m2: 1}
    after[minute.replace(second=0)] -= 1
    assert {k: v for k, v in slots(conn).items() if k >= due} == {k: v for k, v in after.items() if v}
    # a bounce of another kind changes nothing: a soft one suppresses nobody
    conn.execute(
        "select conveyor.record_email_event('acme', message_id, 'bounced', now(), '{\"bounce_type\": \"soft\"}')"
        " from conveyor.email_messages where to_address = 'c2@example.com'"
    )
    assert {k: v for k, v in slots(conn).items() if k >= due} == {k: v for k, v in after.items() if v}
