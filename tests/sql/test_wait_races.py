"""Waits for events never miss their event: every interleaving of trigger, reply, dispatchers
and ticks (sql/waits.sql), and the look-back ("since").

A trial is lost when its execution took the timeout branch although its reply committed
before the timeout; the suite also checks that no execution is resumed twice. The large
version is bench/wait_races.py (make bench-wait-races).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from bench.wait_races import (
    Racers,
    after_waiting,
    answer,
    ask,
    ask_workflow,
    dispatch,
    during_burst,
    emit,
    outcomes,
    publish,
    same_statement,
    same_transaction,
    settle,
    settle_without_timeouts,
    tick,
    two_connections,
)
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def assert_all_answered(conn: Conn, questions: list[str]) -> None:
    result = outcomes(conn)
    lost = sorted(q for q in questions if result[q]["vars"].get("r") != "event")
    twice = sorted(q for q in questions if result[q]["waits_done"] != 1)
    assert (lost, twice) == ([], [])
    assert all(result[q]["status"] == "completed" for q in questions)


def test_trigger_and_reply_in_the_same_statement(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    conn.execute(
        "select conveyor.emit(%(t)s, 'chat.question.asked', '{\"q\": \"q1\"}'),"
        ' conveyor.emit(%(t)s, \'chat.answer.given\', \'{"q": "q1", "a": "same statement"}\')',
        {"t": tenant},
    )
    settle(conn)
    assert_all_answered(conn, ["q1"])
    assert outcomes(conn)["q1"]["vars"]["a"] == "same statement"


def test_trigger_and_reply_in_the_same_transaction_and_batch(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    with conn.transaction():
        ask(conn, "q1")
        answer(conn, "q1")
    ask(conn, "q2")
    answer(conn, "q2")
    # one dispatch takes all four: the replies are in their triggers' batch
    assert dispatch(conn) == 4
    assert {q: o["vars"]["r"] for q, o in outcomes(conn).items()} == {"q1": "event", "q2": "event"}
    # the replies were taken by the waits' look-back in their own batch: not logged as
    # matching no wait
    assert conn.execute("select count(*) as n from conveyor.execution_logs").fetchone() == {"n": 0}
    settle(conn)
    assert_all_answered(conn, ["q1", "q2"])


def test_a_reply_dispatched_while_the_wait_is_uncommitted_is_not_lost(
    db_url: str, conn: Conn, tenant: str
) -> None:
    # The registering dispatch has not committed when another dispatcher claims the reply:
    # the reply's dispatch cannot see the wait, the wait's look-back could not see the reply.
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    with psycopg.connect(db_url, row_factory=dict_row) as registering:
        assert dispatch(registering) == 1  # not committed yet
        answer(conn, "q1")
        assert dispatch(conn) == 1
        registering.commit()
    # the confirmation (every tick) looks back once more, in a transaction that sees both
    assert outcomes(conn)["q1"]["status"] == "waiting"
    assert tick(conn) == 1
    assert_all_answered(conn, ["q1"])


def test_a_tick_does_not_confirm_the_waits_its_own_dispatch_registered(
    db_url: str, conn: Conn, tenant: str
) -> None:
    # conveyor.tick() dispatches and then confirms, in one transaction: the waits its
    # dispatch began are not committed yet, so it must leave them to the next tick.
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    with psycopg.connect(db_url, row_factory=dict_row) as ticking:
        ticking.execute("select conveyor.tick()")
        answer(conn, "q1")
        assert dispatch(conn) == 1
        ticking.commit()
    assert outcomes(conn)["q1"]["status"] == "waiting"
    assert tick(conn) == 1
    assert_all_answered(conn, ["q1"])


def test_a_captured_change_ingested_while_the_wait_is_uncommitted_is_not_lost(
    db_url: str, conn: Conn, tenant: str
) -> None:
    # A captured change becomes an event inside the dispatch that matches it, so it is
    # committed only with that dispatch: the wait's confirmation must not run in between.
    conn.execute("create table public.tickets (tenant_id text, id text primary key, state text)")
    conn.execute("select conveyor.watch('public.tickets', 'help', 'ticket')")
    doc = ask_workflow()
    doc["steps"][0]["wait_for_event"] = {
        "event": "help.ticket.updated",
        "match": {"entity_id": "{{trigger.payload.q}}"},
        "timeout": "1h",
    }
    doc["steps"][1]["set"] = {"r": "event", "state": "{{steps.reply.output.event.payload.new.state}}"}
    publish(conn, tenant, doc)
    conn.execute("insert into public.tickets values (%s, 't1', 'open')", (tenant,))
    settle_without_timeouts(conn)
    ask(conn, "t1")
    with (
        psycopg.connect(db_url, row_factory=dict_row) as registering,
        psycopg.connect(db_url, row_factory=dict_row) as ingesting,
    ):
        assert dispatch(registering) == 1  # the wait began; not committed
        conn.execute("update public.tickets set state = 'solved'")
        assert dispatch(ingesting) == 1  # ingested, claimed, cannot see the wait; not committed
        registering.commit()
        assert tick(conn) == 0  # would confirm the wait without seeing the change
        ingesting.commit()
    assert outcomes(conn)["t1"]["status"] == "waiting"
    assert tick(conn) == 1
    assert outcomes(conn)["t1"]["vars"] == {"r": "event", "state": "solved"}


def test_a_dispatch_locks_only_the_waits_its_events_answer(db_url: str, conn: Conn, tenant: str) -> None:
    # Another dispatch of the same tenant is in progress (it resumed q1 and holds it): the
    # reply to q2 still finds q2, which nothing else holds.
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    ask(conn, "q2")
    settle_without_timeouts(conn)
    answer(conn, "q1")
    with psycopg.connect(db_url, row_factory=dict_row) as first:
        assert dispatch(first) == 1
        answer(conn, "q2")
        assert dispatch(conn) == 1
        assert outcomes(conn)["q2"]["vars"] == {"r": "event", "a": "yes"}
        first.commit()
    assert_all_answered(conn, ["q1", "q2"])


def test_a_reply_committed_before_the_timeout_but_not_dispatched_wins(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    settle_without_timeouts(conn)
    answer(conn, "q1")  # a backlog: not dispatched when the timeout falls due
    assert tick(conn, "now() + interval '2 hours'") == 1
    assert_all_answered(conn, ["q1"])
    assert dispatch(conn) == 1  # the reply's own dispatch finds nothing left to resume
    assert_all_answered(conn, ["q1"])


def test_two_replies_at_once_resume_the_wait_once(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    settle_without_timeouts(conn)
    first = answer(conn, "q1", "first")
    answer(conn, "q1", "second")
    assert dispatch(conn) == 2
    settle(conn)
    assert_all_answered(conn, ["q1"])
    out = conn.execute("""
        select r.output -> 'event' ->> 'event_id' as event_id from conveyor.step_runs as r where r.step_id = 'reply'
        """).fetchone()
    assert out == {"event_id": str(first)}


def test_a_wait_for_a_pattern_is_answered_by_any_type_it_covers(conn: Conn, tenant: str) -> None:
    doc = ask_workflow()
    doc["steps"][0]["wait_for_event"]["event"] = "chat.answer.*"
    publish(conn, tenant, doc)
    ask(conn, "q1")
    ask(conn, "q2")
    settle_without_timeouts(conn)
    emit(conn, "chat.answer.given", {"q": "q1", "a": "given"})
    emit(conn, "chat.typing.started", {"q": "q2", "a": "not an answer"})
    settle(conn)
    result = outcomes(conn)
    assert (result["q1"]["vars"], result["q2"]["vars"]) == ({"r": "event", "a": "given"}, {"r": "timeout"})


def test_a_reply_that_matches_no_wait_is_logged(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    ask(conn, "q1")
    settle_without_timeouts(conn)
    stray = answer(conn, "q-unknown")
    dispatch(conn)
    logs = conn.execute(
        "select level, message, details from conveyor.execution_logs where event_id = %s", (stray,)
    ).fetchall()
    assert logs == [
        {
            "level": "info",
            "message": f"event {stray} (chat.answer.given) resumed no execution: no wait for it matched its correlation",
            "details": {"reason": "no_wait_matched"},
        }
    ]
    assert outcomes(conn)["q1"]["status"] == "waiting"


# --- the look-back ------------------------------------------------------------------------


def delayed_ask(**wait: Any) -> dict[str, Any]:
    return ask_workflow(steps_before=[{"id": "pause", "delay": {"for": "1s"}}], **wait)


def test_by_default_a_reply_sent_during_an_earlier_delay_counts(conn: Conn, tenant: str) -> None:
    # trigger -> 1 s delay -> wait; the reply arrives during the delay
    publish(conn, tenant, delayed_ask())
    ask(conn, "q1")
    settle_without_timeouts(conn)
    answer(conn, "q1")
    settle_without_timeouts(conn)
    assert outcomes(conn)["q1"]["status"] == "waiting"  # still in the delay
    tick(conn, "now() + interval '2 seconds'")  # the wait begins and looks back
    assert_all_answered(conn, ["q1"])


def test_a_reply_from_before_the_trigger_does_not_count(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow())
    answer(conn, "q1", "old")
    settle_without_timeouts(conn)
    time.sleep(0.01)
    ask(conn, "q1")
    settle(conn)
    assert outcomes(conn)["q1"]["vars"] == {"r": "timeout"}


def test_since_wait_ignores_replies_before_the_wait_began(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, delayed_ask(since="wait"))
    ask(conn, "q1")
    ask(conn, "q2")
    settle_without_timeouts(conn)
    answer(conn, "q1", "during the delay")
    settle_without_timeouts(conn)
    time.sleep(0.01)
    tick(conn, "now() + interval '2 seconds'")
    time.sleep(0.01)
    answer(conn, "q2", "after the wait began")
    settle(conn)
    result = outcomes(conn)
    assert result["q1"]["vars"] == {"r": "timeout"}
    assert result["q2"]["vars"] == {"r": "event", "a": "after the wait began"}


def test_since_a_template_timestamp(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ask_workflow(since="{{trigger.payload.since}}"))
    answer(conn, "q1", "old")
    settle_without_timeouts(conn)
    row = conn.execute("select now() - interval '1 hour' as t").fetchone()
    assert row is not None
    emit(conn, "chat.question.asked", {"q": "q1", "since": row["t"].isoformat()})
    settle(conn)
    # the reply came before the trigger, but after the trigger's "since"
    assert outcomes(conn)["q1"]["vars"] == {"r": "event", "a": "old"}


def test_since_is_validated(conn: Conn, tenant: str) -> None:
    rows = conn.execute(
        "select conveyor.validate_workflow(%s) as problem", (Jsonb(ask_workflow(since="yesterday-ish")),)
    ).fetchall()
    assert [r["problem"] for r in rows] == [
        'steps[0].wait_for_event.since: "yesterday-ish" is not "execution", "wait", a timestamp or a template'
    ]


# --- interleavings at random ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "trials"),
    [
        (same_statement, 30),
        (same_transaction, 30),
        (two_connections, 40),
        (during_burst, 20),
        (after_waiting, 30),
    ],
)
def test_random_interleavings_lose_nothing(
    db_url: str,
    conn: Conn,
    tenant: str,
    scenario: Callable[[str, str, int, random.Random], None],
    trials: int,
) -> None:
    # two dispatch loops and two tick loops racing, unrelated events of the tenant flowing
    publish(conn, tenant, ask_workflow())
    with Racers(db_url):
        scenario(db_url, "q", trials, random.Random(7))
    settle(conn)
    assert_all_answered(conn, [f"q{i}" for i in range(trials)])
