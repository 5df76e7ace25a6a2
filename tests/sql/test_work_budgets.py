"""Work budgets: breadth as well as depth of event chains, per execution, per tenant."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.sql.dispatch_helpers import add_tenant, emit, log_reasons, publish

Conn = psycopg.Connection[dict[str, Any]]

STORM = {"steps": [{"id": "e", "emit": {"event": "b.fan.go"}, "next": "e"}], "settings": {"max_steps": 30}}


def drain(conn: Conn, rounds: int = 200) -> int:
    """Dispatches until nothing is pending; returns how many events were dispatched."""
    total = 0
    for _ in range(rounds):
        row = conn.execute("select conveyor.dispatch(1000) as n").fetchone()
        assert row is not None
        if row["n"] == 0:
            return total
        total += int(row["n"])
    raise AssertionError(f"still dispatching after {rounds} rounds ({total} events)")


def count(conn: Conn, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def test_a_fan_out_storm_is_bounded_by_its_chain_budget(conn: Conn) -> None:
    """The issue's storm: each execution emits 30 events that each start it again."""
    b = add_tenant(conn, "tb")
    a = add_tenant(conn, "ta")
    publish(conn, b, "storm", {"event": "b.fan.go"}, **STORM)
    publish(conn, a, "hello", {"event": "a.contact.created"})
    root = emit(conn, b, "b.fan.go")

    drain(conn)

    events = count(conn, "select count(*) from conveyor.events where tenant_id = 'tb'")
    executions = count(conn, "select count(*) from conveyor.executions where tenant_id = 'tb'")
    # 1,000 emitted events at most (conveyor.max_chain_events) plus the root
    assert events == 1001
    assert executions <= 1001
    spent = conn.execute(
        "select events, executions from conveyor.event_chains where root_event_id = %s", (root,)
    ).fetchone()
    assert spent is not None and spent["events"] == 1000 and spent["executions"] <= 1000
    stopped = count(
        conn,
        "select count(*) from conveyor.executions where status = 'failed'"
        " and error ->> 'message' like 'event chain budget spent: the chain of event %%'",
    )
    assert stopped >= 1
    # every emitted event carries its chain's root
    assert (
        count(
            conn,
            "select count(*) from conveyor.events where depth > 0 and root_event_id is distinct from %s",
            root,
        )
        == 0
    )

    # the other tenant is served at once
    emit(conn, a, "a.contact.created")
    assert drain(conn) == 1
    assert (
        count(
            conn, "select count(*) from conveyor.executions where tenant_id = 'ta' and status = 'completed'"
        )
        == 1
    )


def test_a_chain_is_bounded_in_the_executions_it_starts(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    conn.execute("set conveyor.max_chain_executions = 3")
    publish(
        conn,
        t,
        "fan",
        {"event": "crm.deal.won"},
        steps=[{"id": f"e{i}", "emit": {"event": "crm.task.requested"}} for i in range(5)],
    )
    publish(conn, t, "task", {"event": "crm.task.requested"})
    emit(conn, t, "crm.deal.won")

    drain(conn)

    assert count(conn, "select count(*) from conveyor.executions") == 1 + 3
    assert log_reasons(conn).count("chain_budget") == 2
    message = conn.execute(
        "select message from conveyor.execution_logs where details ->> 'reason' = 'chain_budget' limit 1"
    ).fetchone()
    assert message is not None
    assert "reached its limit of 3 executions (setting conveyor.max_chain_executions)" in message["message"]


def test_an_execution_is_bounded_in_the_events_it_emits(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "chatty",
        {"event": "crm.deal.won"},
        steps=[{"id": "e", "emit": {"event": "crm.deal.noted"}, "next": "e"}],
        settings={"max_steps": 500},
    )
    emit(conn, t, "crm.deal.won")

    drain(conn)

    row = conn.execute("select status, error from conveyor.executions").fetchone()
    assert row is not None and row["status"] == "failed"
    assert "emit budget spent: execution" in row["error"]["message"]
    assert "has emitted 100 events, its limit is 100" in row["error"]["message"]
    assert "conveyor.max_emits_per_execution" in row["error"]["hint"]
    assert count(conn, "select count(*) from conveyor.events where depth = 1") == 100


def test_a_tenant_is_bounded_in_events_per_minute(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    other = add_tenant(conn, "globex")
    conn.execute("set conveyor.max_tenant_events_per_minute = 5")
    publish(conn, t, "note", {"event": "crm.contact.created"})
    publish(conn, other, "note", {"event": "crm.contact.created"})
    for _ in range(4):
        emit(conn, t, "crm.contact.created")
    drain(conn)
    for _ in range(4):
        emit(conn, t, "crm.contact.created")
        emit(conn, other, "crm.contact.created")
    drain(conn)

    assert count(conn, "select count(*) from conveyor.executions where tenant_id = 'acme'") == 5
    assert count(conn, "select count(*) from conveyor.executions where tenant_id = 'globex'") == 4
    assert log_reasons(conn) == ["tenant_event_rate"] * 3
    # counted per minute, across dispatching backends' shards
    assert count(conn, "select sum(events) from conveyor.tenant_event_rates where tenant_id = 'acme'") == 8


def other_dispatchers_counted(conn: Conn, tenant_id: str, events: int) -> None:
    """Sets what the other dispatching backends (the shards but this one's) counted this minute."""
    conn.execute(
        "delete from conveyor.tenant_event_rates where tenant_id = %s and shard <> conveyor.stats_shard()",
        (tenant_id,),
    )
    conn.execute(
        "insert into conveyor.tenant_event_rates (tenant_id, minute, shard, events)"
        " select %s, date_trunc('minute', now()), (conveyor.stats_shard() + 1) %% 16, %s",
        (tenant_id, events),
    )


def dispatch_in_batches(conn: Conn, batch: int) -> None:
    while count(conn, "select conveyor.dispatch(%s)", batch) > 0:
        pass


def test_a_tenant_near_its_event_rate_is_weighed_event_by_event(conn: Conn) -> None:
    """Near the limit (within 16 steps of a thousandth of it) every batch is weighed: exact."""
    t = add_tenant(conn, "acme")
    conn.execute("set conveyor.max_tenant_events_per_minute = 20000")  # a step of 20 events
    publish(conn, t, "note", {"event": "crm.contact.created"})
    other_dispatchers_counted(conn, t, 19_700)
    for _ in range(310):
        emit(conn, t, "crm.contact.created")

    dispatch_in_batches(conn, 50)

    assert count(conn, "select count(*) from conveyor.executions") == 300
    assert log_reasons(conn) == ["tenant_event_rate"] * 10
    assert count(conn, "select count(*) from conveyor.tenant_event_rates where near_budget") == 1


def test_a_tenant_that_nears_its_event_rate_between_checks_is_caught_at_the_next_step(conn: Conn) -> None:
    """Far from the limit only step crossings are checked; the margin covers what others add meanwhile."""
    t = add_tenant(conn, "acme")
    conn.execute("set conveyor.max_tenant_events_per_minute = 20000")  # a step of 20, a margin of 320
    publish(conn, t, "note", {"event": "crm.contact.created"})
    other_dispatchers_counted(conn, t, 10_000)
    for _ in range(10):
        emit(conn, t, "crm.contact.created")
    dispatch_in_batches(conn, 10)  # the minute's first batch here: checked, far
    assert count(conn, "select count(*) from conveyor.tenant_event_rates where near_budget") == 0

    # meanwhile the other dispatchers reach 19,600 (each would have checked at its own steps)
    other_dispatchers_counted(conn, t, 19_600)
    for _ in range(500):
        emit(conn, t, "crm.contact.created")
    dispatch_in_batches(conn, 5)

    # 19,600 + 10 + 390 = 20,000: the rest started nothing, exactly
    assert count(conn, "select count(*) from conveyor.executions") == 400
    assert log_reasons(conn) == ["tenant_event_rate"] * 110


def test_a_tenant_is_bounded_in_active_executions(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    conn.execute("set conveyor.max_tenant_active_executions = 3")
    publish(
        conn, t, "slow", {"event": "crm.contact.created"}, steps=[{"id": "w", "delay": {"for": "1 hour"}}]
    )
    publish(conn, t, "quick", {"event": "crm.contact.updated"})
    for _ in range(5):
        emit(conn, t, "crm.contact.created")
    drain(conn)
    assert count(conn, "select count(*) from conveyor.executions where status = 'waiting'") == 3
    assert log_reasons(conn) == ["tenant_active_limit"] * 2

    # finished executions free their places
    conn.execute("select conveyor.resume_due(now() + interval '2 hours')")
    emit(conn, t, "crm.contact.updated")
    drain(conn)
    assert count(conn, "select count(*) from conveyor.executions where status = 'completed'") == 4


def test_an_execution_is_bounded_in_the_state_it_keeps(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    conn.execute("set conveyor.max_execution_state_bytes = 20000")
    publish(
        conn,
        t,
        "hoard",
        {"event": "crm.contact.created"},
        steps=[
            {"id": "a", "set": {"a": "{{trigger.payload.blob}}"}},
            {"id": "b", "set": {"b": "{{trigger.payload.blob}}"}},
            {"id": "c", "set": {"c": "{{trigger.payload.blob}}"}},
        ],
    )
    emit(conn, t, "crm.contact.created", {"blob": "x" * 6000})
    drain(conn)

    row = conn.execute("select status, error, steps_run from conveyor.executions").fetchone()
    assert row is not None and row["status"] == "failed"
    assert row["steps_run"] == 2
    assert "execution state budget spent" in row["error"]["message"]
    assert 'stopped before step "c"' in row["error"]["message"]


def test_spent_budgets_are_forgotten_with_the_history(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    conn.execute(
        "insert into conveyor.event_chains (root_event_id, tenant_id, events, updated_at) values"
        " (1, %s, 5, now() - interval '8 days'), (2, %s, 5, now() - interval '1 day')",
        (t, t),
    )
    conn.execute(
        "insert into conveyor.tenant_event_rates (tenant_id, minute, shard, events) values"
        " (%s, date_trunc('minute', now() - interval '2 hours'), 0, 9), (%s, date_trunc('minute', now()), 0, 3)",
        (t, t),
    )
    result = conn.execute("select conveyor.prune_history(now()) as r").fetchone()
    assert result is not None and result["r"]["budgets"] == 2
    assert [r["root_event_id"] for r in conn.execute("select root_event_id from conveyor.event_chains")] == [
        2
    ]
    assert count(conn, "select sum(events) from conveyor.tenant_event_rates") == 3
