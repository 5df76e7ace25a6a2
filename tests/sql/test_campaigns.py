"""Campaigns compile into the engine: applying a document (checked with paths), enrolling
contacts (never twice while active, also when enrollers race), the send window in the
contact's zone, the tenant's send rate in order, versions pinned, pause/resume/cancel."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

CAMPAIGN: dict[str, Any] = {
    "slug": "welcome",
    "name": "Welcome",
    "audience": "contact",
    "send_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00", "timezone": "contact"},
    "send_rate": {"per_minute": 100},
    "steps": [
        {"id": "hello", "channel": "email", "subject": "Hi {{contact.name}}", "text": "Welcome"},
        {"id": "nudge", "channel": "email", "delay": "2d", "subject": "Still there?", "text": "Nudge"},
        {"id": "last", "channel": "email", "delay": "3d", "subject": "Last one", "text": "Bye",
         "skip_if": {"field": "contact.vip", "op": "equals", "value": True}},
    ],
}  # fmt: skip


def setup(conn: Conn, contacts: int = 10, tz: str = "UTC") -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    conn.execute(
        "create table public.contacts (id bigint primary key, tenant_id text, name text, email text,"
        " timezone text, vip boolean default false)"
    )
    conn.execute(
        "insert into conveyor.entities (entity, table_name, id_column, tenant_column)"
        " values ('contact', 'public.contacts', 'id', 'tenant_id')"
    )
    conn.execute(
        "insert into public.contacts select g, 'acme', 'c' || g, 'c' || g || '@example.com', %s"
        " from generate_series(1, %s) as g",
        (tz, contacts),
    )


def apply(conn: Conn, doc: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute("select * from conveyor.apply_campaign('acme', %s)", (Jsonb(doc),)).fetchone()
    assert row is not None
    return row


def enroll(conn: Conn, ids: list[str], slug: str = "welcome") -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.enroll_campaign('acme', %s, %s)", (slug, ids)).fetchall()


def test_a_campaign_compiles_into_a_workflow_version(conn: Conn) -> None:
    setup(conn)
    row = apply(conn, CAMPAIGN)
    assert (row["version"], row["workflow_version"]) == (1, 1)
    steps = conn.execute(
        "select step_id, kind from conveyor.workflow_steps s join conveyor.workflows w using (workflow_id)"
        " where w.slug = 'campaign-welcome' order by position"
    ).fetchall()
    ids = [s["step_id"] for s in steps]
    assert ids[:7] == [
        "hello-start",
        "hello-contact",
        "hello-present",
        "hello-slot",
        "hello-ontime",
        "hello-send",
        "hello-wait",
    ]
    assert "last-skip" in ids and "done" in ids and "hello-halted" in ids
    # the same document again makes no new version; an edit does
    assert apply(conn, CAMPAIGN)["version"] == 1
    edited = {**CAMPAIGN, "name": "Welcome 2"}
    assert (apply(conn, edited)["version"], apply(conn, edited)["workflow_version"]) == (2, 2)


def test_a_bad_document_is_refused_with_paths_and_nothing_is_stored(conn: Conn) -> None:
    setup(conn)
    bad = {
        **CAMPAIGN,
        "steps": [*CAMPAIGN["steps"][:2], {"id": "x", "channel": "email", "delay": "1 fortnight"}],
    }
    with pytest.raises(psycopg.errors.InvalidParameterValue) as failure:
        apply(conn, bad)
    assert str(failure.value).startswith("campaign welcome: ")
    detail = failure.value.diag.message_detail or ""
    assert 'steps[2].delay: invalid duration "1 fortnight"' in detail
    assert "steps[2].subject: required key is missing" in detail
    conn.rollback()
    assert conn.execute("select count(*) as n from conveyor.campaigns").fetchone() == {"n": 0}


def test_duplicate_enrollment_is_refused_and_a_finished_one_frees_the_contact(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    first = enroll(conn, ["1", "2", "99"])
    assert [r["result"] for r in first] == ["enrolled", "enrolled", "not found"]
    assert [r["result"] for r in enroll(conn, ["1"])] == ["already enrolled"]
    [row] = first[:1]
    assert conn.execute(
        "select conveyor.control_enrollment('acme', %s, 'cancel') as s", (row["enrollment_id"],)
    ).fetchone() == {"s": "cancelled"}
    assert [r["result"] for r in enroll(conn, ["1"])] == ["enrolled"]
    stats = conn.execute(
        "select * from conveyor.campaign_stats('acme', 'welcome') where step_key = ''"
    ).fetchone()
    assert stats is not None and stats["enrolled"] == 3


def test_an_enrollment_whose_execution_failed_frees_its_contact_at_the_next_enroll(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    [first] = enroll(conn, ["1"])
    enroll(conn, ["2"])
    conn.execute(
        "select conveyor.finish_execution(%s, 'failed', '{\"message\": \"x\"}')",
        (first["execution_id"],),
    )
    assert [r["result"] for r in enroll(conn, ["1", "2"])] == ["enrolled", "already enrolled"]
    rows = conn.execute(
        "select entity_id, status from conveyor.campaign_enrollments order by enrollment_id"
    ).fetchall()
    assert [(r["entity_id"], r["status"]) for r in rows] == [
        ("1", "failed"),
        ("2", "active"),
        ("1", "active"),
    ]


def test_racing_enrollers_enroll_a_contact_once(db_url: str, conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    conn.commit()
    results: list[str] = []
    barrier = threading.Barrier(4)

    def racer() -> None:
        with psycopg.connect(db_url, autocommit=False) as c:
            barrier.wait()
            rows = c.execute(
                "select result from conveyor.enroll_campaign('acme', 'welcome', array['5'])"
            ).fetchall()
            results.extend(r[0] for r in rows)
            c.commit()

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already enrolled"] * 3 + ["enrolled"]
    assert conn.execute("select count(*) as n from conveyor.campaign_enrollments").fetchone() == {"n": 1}


def test_one_call_answers_every_id_in_order_once_per_contact(conn: Conn) -> None:
    # set-based: ids the column type cannot hold, non-canonical spellings and repeats
    setup(conn)
    apply(conn, CAMPAIGN)
    rows = enroll(conn, ["3", "abc", "007", "3", "4", "99"])
    assert [(r["entity_id"], r["result"]) for r in rows] == [
        ("3", "enrolled"), ("abc", "not found"), ("007", "not found"), ("3", "already enrolled"),
        ("4", "enrolled"), ("99", "not found"),
    ]  # fmt: skip
    assert rows[3]["enrollment_id"] is None and rows[0]["execution_id"] is not None
    linked = conn.execute(
        "select count(*) as n from conveyor.campaign_enrollments ce join conveyor.executions x"
        " using (execution_id) where (x.trigger -> 'payload' ->> 'enrollment_id')::bigint = ce.enrollment_id"
        " and x.trigger -> 'payload' -> 'contact' ->> 'id' = ce.entity_id"
    ).fetchone()
    assert linked == {"n": 2}
    stats = conn.execute(
        "select * from conveyor.campaign_stats('acme', 'welcome') where step_key = ''"
    ).fetchone()
    assert stats is not None and stats["enrolled"] == 2


def send_times(conn: Conn) -> list[datetime]:
    rows = conn.execute(
        "select (sr.output ->> 'send_at')::timestamptz as at from conveyor.step_runs sr"
        " where sr.step_id = 'hello-slot' order by sr.execution_id"
    ).fetchall()
    return [r["at"] for r in rows]


def test_a_send_due_outside_the_window_waits_for_its_opening_in_the_contact_s_zone(conn: Conn) -> None:
    # Tokyo is UTC+9, Berlin UTC+1: whenever this runs, each send falls in its own zone's window
    setup(conn, contacts=2, tz="Asia/Tokyo")
    conn.execute("update public.contacts set timezone = 'Europe/Berlin' where id = 2")
    apply(conn, CAMPAIGN)
    enroll(conn, ["1", "2"])
    # the slot step ran at enrollment (real time); what matters is the window it honoured
    tokyo, berlin = send_times(conn)
    for at, zone in ((tokyo, "Asia/Tokyo"), (berlin, "Europe/Berlin")):
        local = conn.execute("select (%s::timestamptz at time zone %s) as t", (at, zone)).fetchone()
        assert local is not None
        assert local["t"].isoweekday() <= 5 and 9 <= local["t"].hour < 17, (zone, local)


def test_the_send_rate_holds_in_order(conn: Conn) -> None:
    conn.execute("insert into conveyor.tenants (tenant_id, name) values ('acme', 'Acme')")
    at = datetime(2026, 12, 7, 10, 0, 30, tzinfo=UTC)
    rows = conn.execute(
        "select g, conveyor.campaign_send_slot('acme', 'email', 100, null, %s) as t"
        " from generate_series(1, 250) as g order by g",
        (at,),
    ).fetchall()
    times = [r["t"] for r in rows]
    assert times == sorted(times)  # in order of arrival
    per_minute: dict[datetime, int] = {}
    for t in times:
        minute = t.replace(second=0, microsecond=0)
        per_minute[minute] = per_minute.get(minute, 0) + 1
    assert max(per_minute.values()) <= 100
    assert times[-1] >= at.replace(second=0) + timedelta(minutes=2)
    assert times[0] == at


def test_tick_with_a_chosen_now_resumes_the_wait_into_the_next_step(conn: Conn) -> None:
    setup(conn, contacts=1)
    doc = {**CAMPAIGN, "send_window": None}
    del doc["send_window"]
    apply(conn, doc)
    [row] = enroll(conn, ["1"])
    status = conn.execute(
        "select status, wait_kind, current_step from conveyor.executions where execution_id = %s",
        (row["execution_id"],),
    ).fetchone()
    # the first email is queued for the runner
    assert status == {"status": "waiting", "wait_kind": "action", "current_step": "hello-send"}


def test_clock_control_a_send_due_on_a_saturday_waits_for_monday_nine_in_the_contact_s_zone(
    conn: Conn,
) -> None:
    setup(conn, contacts=1, tz="Asia/Tokyo")
    doc = {
        **CAMPAIGN,
        "steps": [
            {"id": "pause", "channel": "wait", "delay": "1d"},
            {"id": "hello", "channel": "email", "subject": "Hi", "text": "Hi"},
        ],
    }
    apply(conn, doc)
    [row] = enroll(conn, ["1"])
    # Saturday 2026-12-12 10:00 in Tokyo (01:00 UTC): the delay is over, the window closed
    saturday = datetime(2026, 12, 12, 1, 0, tzinfo=UTC)
    conn.execute("select conveyor.tick(p_now => %s)", (saturday,))
    execution = conn.execute(
        "select status, wait_kind, current_step, resume_at from conveyor.executions where execution_id = %s",
        (row["execution_id"],),
    ).fetchone()
    assert execution is not None
    monday_nine_tokyo = datetime(2026, 12, 14, 0, 0, tzinfo=UTC)
    assert (execution["current_step"], execution["wait_kind"], execution["resume_at"]) == (
        "hello-slot", "delay", monday_nine_tokyo,
    )  # fmt: skip
    # at the opening the send goes to the runner's queue
    conn.execute("select conveyor.tick(p_now => %s)", (monday_nine_tokyo,))
    after = conn.execute(
        "select wait_kind, current_step from conveyor.executions where execution_id = %s",
        (row["execution_id"],),
    ).fetchone()
    assert after == {"wait_kind": "action", "current_step": "hello-send"}


def ab_campaign(conn: Conn) -> int:
    setup(conn, contacts=1)
    doc = {
        **CAMPAIGN,
        "winner": {"metric": "open", "min_sample": 100},
        "steps": [
            {"id": "hello", "channel": "email", "text": "Hi", "variants": [
                {"name": "a", "weight": 50, "subject": "A"}, {"name": "b", "weight": 50, "subject": "B"}]},
        ],
    }  # fmt: skip
    return int(apply(conn, doc)["campaign_id"])


def counts(conn: Conn, campaign_id: int, a: tuple[int, int], b: tuple[int, int]) -> None:
    for variant, (sent, opened) in (("a", a), ("b", b)):
        conn.execute(
            "insert into conveyor.campaign_stats (tenant_id, campaign_id, step_key, variant, sent, opened)"
            " values ('acme', %s, 'hello', %s, %s, %s) on conflict (campaign_id, step_key, variant)"
            " do update set sent = excluded.sent, opened = excluded.opened",
            (campaign_id, variant, sent, opened),
        )


def test_the_ab_winner_waits_for_the_sample_and_significance_then_new_enrollments_get_it(conn: Conn) -> None:
    campaign_id = ab_campaign(conn)
    decide = "select conveyor.campaign_decide_winners(%s) as n"
    counts(conn, campaign_id, (99, 60), (100, 20))  # a has too small a sample yet
    assert conn.execute(decide, (campaign_id,)).fetchone() == {"n": 0}
    counts(conn, campaign_id, (100, 24), (100, 20))  # 24 % against 20 %: z = 0.69, not significant
    assert conn.execute(decide, (campaign_id,)).fetchone() == {"n": 0}
    counts(conn, campaign_id, (100, 40), (100, 20))  # 40 % against 20 %: z = 3.09
    assert conn.execute(decide, (campaign_id,)).fetchone() == {"n": 1}
    winner = conn.execute("select winner, figures from conveyor.campaign_winners").fetchone()
    assert winner is not None and winner["winner"] == "a"
    assert winner["figures"]["z"] == pytest.approx(3.0861, abs=1e-3)
    doc = conn.execute(
        "select document from conveyor.campaign_versions where campaign_id = %s and version = 2",
        (campaign_id,),
    ).fetchone()
    assert doc is not None and doc["document"]["steps"][0]["subject"] == "A"
    assert "variants" not in doc["document"]["steps"][0]
    [row] = enroll(conn, ["1"])
    version = conn.execute("select version from conveyor.campaign_enrollments where enrollment_id = %s",
                           (row["enrollment_id"],)).fetchone()  # fmt: skip
    assert version == {"version": 2}


def test_each_step_reads_the_contact_as_it_is_now_and_a_deleted_one_stops(conn: Conn) -> None:
    setup(conn, contacts=3)
    doc = {**CAMPAIGN, "steps": [
        {"id": "pause", "channel": "wait", "delay": "1d"},
        {"id": "last", "channel": "email", "subject": "Hi {{contact.name}}", "text": "Bye",
         "skip_if": {"field": "contact.vip", "op": "equals", "value": True}},
    ]}  # fmt: skip
    del doc["send_window"]
    apply(conn, doc)
    rows = {r["entity_id"]: r for r in enroll(conn, ["1", "2", "3"])}
    # after enrolling: 1 became a VIP, 2 changed name and address, 3 was deleted
    conn.execute("update public.contacts set vip = true where id = 1")
    conn.execute("update public.contacts set name = 'Bea', email = 'bea@example.com' where id = 2")
    conn.execute("delete from public.contacts where id = 3")
    conn.execute("select conveyor.tick(p_now => now() + interval '2 days')")

    def state(entity: str) -> dict[str, Any]:
        row = conn.execute(
            "select ce.status, ce.stop_reason, (select string_agg(step_id, ',' order by step_run_id)"
            " from conveyor.step_runs r where r.execution_id = ce.execution_id and r.step_id like 'last-%%') as steps"
            " from conveyor.campaign_enrollments ce where ce.enrollment_id = %s",
            (rows[entity]["enrollment_id"],),
        ).fetchone()
        assert row is not None
        return row

    # the VIP's send was skipped; the deleted contact's enrollment stopped before it
    assert state("1") == {
        "status": "completed",
        "stop_reason": None,
        "steps": "last-start,last-contact,last-present,last-skip",
    }
    assert state("3") == {
        "status": "stopped",
        "stop_reason": "contact_deleted",
        "steps": "last-start,last-contact,last-present",
    }
    send = conn.execute(
        "select input from conveyor.step_runs where execution_id = %s and step_id = 'last-send'",
        (rows["2"]["execution_id"],),
    ).fetchone()
    assert send is not None
    assert (send["input"]["to"], send["input"]["subject"]) == ("bea@example.com", "Hi Bea")
