"""Dispatch: events x subscriptions → executions, exactly once, with limits that say why."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.sql.dispatch_helpers import add_tenant, emit, log_reasons, publish
from tests.sql.table_stats import table_counters
from tests.sql.workflow_documents import AWAIT_REPLY

Conn = psycopg.Connection[dict[str, Any]]


def executions_by_workflow(conn: Conn) -> dict[int, int]:
    rows = conn.execute("select workflow_id, count(*) as n from conveyor.executions group by 1").fetchall()
    return {r["workflow_id"]: r["n"] for r in rows}


def test_committed_event_is_dispatched_exactly_once(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(conn, t, "greet", {"event": "crm.contact.created"})
    event = emit(conn, t, "crm.contact.created", {"name": "Ada"})
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 1}
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 0}
    assert executions_by_workflow(conn) == {wf: 1}
    row = conn.execute(
        "select x.status, x.event_id, x.trigger -> 'payload' as payload, e.dispatched_at is not null as done"
        " from conveyor.executions as x join conveyor.events as e using (event_id)"
    ).fetchone()
    assert row == {"status": "completed", "event_id": event, "payload": {"name": "Ada"}, "done": True}


def test_rolled_back_dispatch_leaves_the_event_pending(db_url: str, conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(conn, t, "greet", {"event": "crm.contact.created"})
    emit(conn, t, "crm.contact.created")
    with psycopg.connect(db_url, row_factory=dict_row) as other:
        assert other.execute("select conveyor.dispatch() as n").fetchone() == {"n": 1}
        other.rollback()
    assert executions_by_workflow(conn) == {}
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 1}
    assert executions_by_workflow(conn) == {wf: 1}


def test_concurrent_dispatchers_never_share_an_event(db_url: str, conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(conn, t, "greet", {"event": "crm.contact.created"})
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', jsonb_build_object('i', i)) from generate_series(1, 3000) as i"
    )
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                while True:
                    row = c.execute("select conveyor.dispatch(100)").fetchone()
                    if row is None or row[0] == 0:
                        return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert errors == []
    row = conn.execute(
        "select count(*) as executions, count(distinct event_id) as events from conveyor.executions"
    ).fetchone()
    assert row == {"executions": 3000, "events": 3000}
    assert conn.execute(
        "select count(*) as n from conveyor.events where dispatched_at is null"
    ).fetchone() == {"n": 0}


def test_exact_and_wildcard_subscriptions_match_by_type(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    exact = publish(conn, t, "exact", {"event": "crm.deal.won"})
    entity = publish(conn, t, "entity-wide", {"event": "crm.deal.*"})
    module = publish(conn, t, "module-wide", {"event": "crm.*"})
    everything = publish(conn, t, "everything", {"event": "*"})
    publish(conn, t, "contacts", {"event": "crm.contact.*"})
    publish(conn, t, "lost", {"event": "crm.deal.lost"})
    publish(conn, t, "billing", {"event": "billing.*"})
    emit(conn, t, "crm.deal.won")
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {exact: 1, entity: 1, module: 1, everything: 1}


def test_source_and_payload_filter_select_events(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    big = publish(
        conn,
        t,
        "big-deals",
        {"event": "crm.deal.won", "source": "crm", "filter": {"payload.amount": {"$gte": 100}}},
    )
    emit(conn, t, "crm.deal.won", {"amount": 250}, source="crm")
    emit(conn, t, "crm.deal.won", {"amount": 50}, source="crm")
    emit(conn, t, "crm.deal.won", {"amount": 500}, source="import")
    conn.execute("select conveyor.dispatch()")
    rows = conn.execute(
        "select trigger -> 'payload' ->> 'amount' as amount from conveyor.executions"
    ).fetchall()
    assert executions_by_workflow(conn) == {big: 1}
    assert rows == [{"amount": "250"}]


def test_trigger_condition_on_changed_columns(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    won = publish(
        conn,
        t,
        "stage-won",
        {
            "event": "crm.deal.updated",
            "condition": {"field": "stage", "op": "changed_to", "value": "won"},
        },
    )
    emit(
        conn, t, "crm.deal.updated", {"old": {"stage": "open"}, "new": {"stage": "won"}, "changed": ["stage"]}
    )
    emit(conn, t, "crm.deal.updated", {"old": {"stage": "won"}, "new": {"stage": "won"}, "changed": []})
    emit(
        conn,
        t,
        "crm.deal.updated",
        {"old": {"stage": "open"}, "new": {"stage": "lost"}, "changed": ["stage"]},
    )
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {won: 1}


def test_other_tenants_workflows_are_not_triggered(conn: Conn) -> None:
    a, b = add_tenant(conn, "acme"), add_tenant(conn, "globex")
    mine = publish(conn, a, "greet", {"event": "crm.contact.created"})
    publish(conn, b, "greet", {"event": "crm.contact.created"})
    emit(conn, a, "crm.contact.created")
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {mine: 1}


def test_run_once_per_entity_refuses_second_run_with_reason(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(conn, t, "welcome", {"event": "crm.contact.updated"}, settings={"run_once_per_entity": True})
    for _ in range(2):
        emit(conn, t, "crm.contact.updated", entity_type="contact", entity_id="42")
    conn.execute("select conveyor.dispatch()")
    emit(conn, t, "crm.contact.updated", entity_type="contact", entity_id="42")
    emit(conn, t, "crm.contact.updated", entity_type="contact", entity_id="43")
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {wf: 2}
    assert log_reasons(conn) == ["run_once", "run_once"]


def test_two_dispatchers_start_a_run_once_workflow_once_per_entity(db_url: str, conn: Conn) -> None:
    # Two events for one entity, taken by two dispatchers at the same time: the second
    # waits for the first (dispatch's advisory lock per limited workflow), then sees its
    # execution and refuses with a reason; it neither starts a second run nor fails.
    t = add_tenant(conn, "acme")
    wf = publish(conn, t, "welcome", {"event": "crm.contact.updated"}, settings={"run_once_per_entity": True})
    for _ in range(2):
        emit(conn, t, "crm.contact.updated", entity_type="contact", entity_id="42")
    outcome: list[Any] = []
    with psycopg.connect(db_url) as first:
        assert first.execute("select conveyor.dispatch(1)").fetchone() == (1,)  # holds its transaction

        def second() -> None:
            try:
                with psycopg.connect(db_url, autocommit=True) as c:
                    outcome.append(c.execute("select conveyor.dispatch(1)").fetchone())
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and outcome == []  # waiting for the first dispatcher
        first.commit()
        thread.join(timeout=30)
    assert outcome == [(1,)]
    assert executions_by_workflow(conn) == {wf: 1}
    assert log_reasons(conn) == ["run_once"]


def test_rate_limit_refuses_with_reason(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(
        conn, t, "limited", {"event": "crm.contact.created"}, settings={"max_executions_per_hour": 2}
    )
    for _ in range(5):
        emit(conn, t, "crm.contact.created")
    conn.execute("select conveyor.dispatch()")
    emit(conn, t, "crm.contact.created")
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {wf: 2}
    assert log_reasons(conn) == ["rate_limit"] * 4
    message = conn.execute("select message from conveyor.execution_logs limit 1").fetchone()
    assert message is not None and "limit of 2 executions per hour" in message["message"]


def test_concurrency_limit_counts_waiting_executions(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(
        conn,
        t,
        "one-at-a-time",
        {"event": "crm.contact.created"},
        settings={"max_concurrent": 1},
        steps=[{"id": "wait", "delay": {"for": "1h"}}],
    )
    emit(conn, t, "crm.contact.created")
    emit(conn, t, "crm.contact.created")
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {wf: 1}
    assert log_reasons(conn) == ["concurrency_limit"]


def test_deactivated_workflow_starts_nothing(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(conn, t, "greet", {"event": "crm.contact.created"})
    conn.execute("select conveyor.set_workflow_active('acme', 'greet', false)")
    emit(conn, t, "crm.contact.created")
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 1}
    assert executions_by_workflow(conn) == {}


def test_event_past_depth_limit_is_refused_and_logged(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(conn, t, "greet", {"event": "crm.contact.created"})
    conn.execute(
        "insert into conveyor.events (tenant_id, event_type, depth) values ('acme', 'crm.contact.created', 11)"
    )
    conn.execute("select conveyor.dispatch()")
    assert executions_by_workflow(conn) == {}
    assert log_reasons(conn) == ["depth_limit"]


def test_self_triggering_workflow_stops_at_depth_limit(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(
        conn,
        t,
        "echo",
        {"event": "loop.ping.sent"},
        steps=[{"id": "again", "emit": {"event": "loop.ping.sent", "payload": {"n": "{{trigger.depth}}"}}}],
    )
    emit(conn, t, "loop.ping.sent")
    for _ in range(20):
        conn.execute("select conveyor.dispatch()")
    # Depths 0..10 run (11 executions); the event at depth 11 is refused.
    assert executions_by_workflow(conn) == {wf: 11}
    assert log_reasons(conn) == ["depth_limit"]
    assert conn.execute("select max(depth) as d from conveyor.events").fetchone() == {"d": 11}


def test_tick_dispatches_in_batches(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(conn, t, "greet", {"event": "crm.contact.created"})
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', '{}'::jsonb) from generate_series(1, 250)"
    )
    result = conn.execute("select conveyor.tick(now(), 100) as r").fetchone()
    assert result is not None and result["r"]["dispatched"] == 250
    assert conn.execute(
        "select count(*) as n from conveyor.executions where status = 'completed'"
    ).fetchone() == {"n": 250}


def test_tick_without_dispatch_leaves_events_to_their_dispatcher(conn: Conn) -> None:
    # a runner whose listener dispatches ticks with p_dispatch => false: time-driven work only
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "pause",
        {"event": "crm.pause.created"},
        steps=[{"id": "wait", "delay": {"for": "1 minute"}}, {"id": "after", "set": {"done": True}}],
    )
    publish(conn, t, "greet", {"event": "crm.contact.created"})
    emit(conn, t, "crm.pause.created")
    conn.execute("select conveyor.dispatch()")
    emit(conn, t, "crm.contact.created")

    later = conn.execute("select now() + interval '2 minutes' as at").fetchone()
    assert later is not None
    result = conn.execute("select conveyor.tick(%s, p_dispatch => false) as r", (later["at"],)).fetchone()
    assert result is not None and result["r"]["dispatched"] == 0 and result["r"]["resumed"] == 1
    assert conn.execute(
        "select count(*) as n from conveyor.events where dispatched_at is null"
    ).fetchone() == {"n": 1}
    result = conn.execute("select conveyor.tick() as r").fetchone()
    assert result is not None and result["r"]["dispatched"] == 1


def test_dispatch_reads_executions_by_key_with_plans_cached_on_small_tables(conn: Conn) -> None:
    # A runner's listener dispatches small batches on one long-lived session: plpgsql's
    # generic plans are made after five calls, on tables never analyzed (a new install's
    # first burst). Queuing the actions must still look each one up by key, not read every
    # execution of the workflow per call (once 100 ms per batch of 200 at 5,000 executions).
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "hook",
        {"event": "crm.contact.created"},
        steps=[{"id": "call", "action": "webhook.send", "with": {"url": "https://example.com/hook"}}],
    )
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', '{}'::jsonb) from generate_series(1, 1200)"
    )
    for _ in range(8):  # past the five custom plans
        conn.execute("select conveyor.dispatch(50)")
    before = table_counters(conn, "conveyor.executions")["read"]
    dispatched = 0
    for _ in range(8):
        row = conn.execute("select conveyor.dispatch(100) as n").fetchone()
        assert row is not None
        dispatched += int(row["n"])
    assert dispatched == 800
    per_event = (table_counters(conn, "conveyor.executions")["read"] - before) / dispatched
    assert per_event <= 2, f"{per_event:.1f} executions read per dispatched event"
    assert conn.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 1200}


def test_started_counts_are_sharded(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    wf = publish(conn, t, "greet", {"event": "crm.contact.created"})
    conn.execute(
        "select conveyor.emit('acme', 'crm.contact.created', '{}'::jsonb) from generate_series(1, 40)"
    )
    conn.execute("select conveyor.dispatch()")
    # one row per workflow and writing transaction: the shard of the dispatcher's backend
    row = conn.execute(
        "select sum(started) as started, count(*) as shards, min(shard) = pg_backend_pid() %% 16 as own_shard"
        " from conveyor.workflow_stats where workflow_id = %s",
        (wf,),
    ).fetchone()
    assert row == {"started": 40, "shards": 1, "own_shard": True}


def test_dispatch_resumes_executions_waiting_for_a_correlated_event(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "await-reply",
        {"event": "crm.contact.created"},
        steps=AWAIT_REPLY,
    )
    emit(conn, t, "crm.contact.created", entity_type="contact", entity_id="42")
    conn.execute("select conveyor.dispatch()")
    emit(conn, t, "email.reply.received", entity_type="contact", entity_id="7")
    conn.execute("select conveyor.dispatch()")
    assert conn.execute("select status from conveyor.executions").fetchall() == [{"status": "waiting"}]
    emit(conn, t, "email.reply.received", entity_type="contact", entity_id="42")
    conn.execute("select conveyor.dispatch()")
    row = conn.execute("select status, vars from conveyor.executions").fetchone()
    assert row == {"status": "completed", "vars": {"replied": True}}


def test_a_failing_trigger_condition_is_logged_and_does_not_block_dispatch(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    fragile = publish(
        conn,
        t,
        "fragile",
        {
            "event": "crm.deal.updated",
            "condition": {
                "field": "trigger.payload.new.amount",
                "op": "gt",
                "value": "{{trigger.payload.limit}}",
            },
        },
    )
    other = publish(conn, t, "other", {"event": "crm.deal.updated"})
    emit(conn, t, "crm.deal.updated", {"new": {"amount": 5}})  # no limit: the condition cannot be evaluated
    emit(conn, t, "crm.deal.updated", {"new": {"amount": 5}, "limit": 1})
    assert conn.execute("select conveyor.dispatch() as n").fetchone() == {"n": 2}
    assert executions_by_workflow(conn) == {fragile: 1, other: 2}
    row = conn.execute(
        "select level, details ->> 'reason' as reason, message from conveyor.execution_logs"
    ).fetchone()
    assert row is not None and row["level"] == "warning" and row["reason"] == "condition_error"
    assert "trigger condition of workflow" in row["message"]
